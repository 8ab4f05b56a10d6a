"""RoPE: apply_rope, the one-call rope, and RotaryEmbedding.

All inputs are random (never zeros). The oracle rotates each pair in float64 with explicit
angles, independently of the library's code.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.nn.rotary import RotaryEmbedding
from attnkit.ops.positions import positions_from_boundaries
from attnkit.ops.rope import apply_rope, rope, rope_cos_sin
from attnkit.ops.rope_scaling import (
    DynamicNTKScaling,
    LinearScaling,
    YarnScaling,
    rope_inv_freq,
)

STYLES = ("half", "interleaved")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64).to(dtype)


def oracle(x, positions, *, theta=10000.0, style="half", rotary_dim=None, freq_scale=1.0):
    """float64 RoPE of x [b, s, h, d] at positions [s] or [b, s], pair by pair."""
    x = x.double()
    d = x.shape[-1]
    r = d if rotary_dim is None else rotary_dim
    pos = positions.double()
    if pos.ndim == 1:
        pos = pos.expand(x.shape[0], -1)
    out = x.clone()
    for i in range(r // 2):
        freq = freq_scale / theta ** (2 * i / r)
        ang = pos * freq  # [b, s]
        c, s = torch.cos(ang)[..., None], torch.sin(ang)[..., None]  # [b, s, 1]
        a_idx, b_idx = (i, i + r // 2) if style == "half" else (2 * i, 2 * i + 1)
        a, b = x[..., a_idx], x[..., b_idx]  # [b, s, h]
        out[..., a_idx] = a * c - b * s
        out[..., b_idx] = b * c + a * s
    return out


def tables(positions, rotary_dim, theta=10000.0):
    inv_freq, _ = rope_inv_freq(rotary_dim, theta=theta)
    return rope_cos_sin(positions, inv_freq)


def tables64(positions, rotary_dim, theta=10000.0):
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    ang = positions.double()[..., None] * inv_freq  # [..., r/2]
    return ang.cos(), ang.sin()


def check(got, expected, *, dtype=torch.float32):
    tol = {torch.float32: 2e-5, torch.float64: 1e-12}.get(dtype, 2e-2)
    torch.testing.assert_close(got.double(), expected.double(), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------- apply_rope


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("head_dim", [2, 64, 80, 128])
def test_apply_rope_matches_oracle(style, head_dim):
    x = randn(2, 17, 3, head_dim)  # [b, s, h, d]
    pos = torch.arange(17) * 7 + 3
    cos, sin = tables(pos, head_dim)  # [s, d/2]
    out = apply_rope(x, cos[:, None], sin[:, None], style=style)  # cos [s, 1, d/2]
    assert out.shape == x.shape and out.dtype == x.dtype
    check(out, oracle(x, pos, style=style))


def test_interleaved_is_half_with_pairs_permuted():
    d = 64
    x = randn(2, 9, 4, d)
    cos, sin = tables(torch.arange(9) + 11, d)
    cos, sin = cos[:, None], sin[:, None]
    # perm lists the interleaved pairs' members first-of-pair then second-of-pair
    perm = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))
    half = apply_rope(x[..., perm], cos, sin, style="half")
    inter = apply_rope(x, cos, sin, style="interleaved")
    torch.testing.assert_close(inter[..., perm], half, rtol=0, atol=0)


@pytest.mark.parametrize("style", STYLES)
def test_partial_rotary(style):
    d, r = 80, 32
    x = randn(2, 13, 3, d, seed=1)
    pos = torch.arange(13)
    cos, sin = tables(pos, r)  # [s, r/2]
    out = apply_rope(x, cos[:, None], sin[:, None], style=style, rotary_dim=r)
    assert torch.equal(out[..., r:], x[..., r:])  # tail untouched, bit for bit
    full_on_head = apply_rope(x[..., :r].contiguous(), cos[:, None], sin[:, None], style=style)
    torch.testing.assert_close(out[..., :r], full_on_head, rtol=0, atol=0)
    check(out, oracle(x, pos, style=style, rotary_dim=r))


@pytest.mark.parametrize("style", STYLES)
def test_rotations_compose(style):
    # float64 tables and x: the property is exact, so the tolerance is float64 rounding
    d = 64
    x = randn(2, 6, 2, d, seed=2, dtype=torch.float64)
    p = torch.tensor([0, 5, 17, 100, 999, 4000])
    q = torch.tensor([3, 1, 250, 7, 42, 1])
    cp, sp = tables64(p, d)
    cq, sq = tables64(q, d)
    cpq, spq = tables64(p + q, d)
    twice = apply_rope(apply_rope(x, cp[:, None], sp[:, None], style=style),
                       cq[:, None], sq[:, None], style=style)
    once = apply_rope(x, cpq[:, None], spq[:, None], style=style)
    torch.testing.assert_close(twice, once, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("scaling", [None, YarnScaling(factor=4.0, original_max_positions=64)])
def test_dot_product_depends_only_on_distance(style, scaling):
    d = 64
    rotary = RotaryEmbedding(d, style=style, scaling=scaling)
    q = randn(1, 1, 1, d, seed=3)
    k = randn(1, 1, 1, d, seed=4)

    def score(pq, pk):
        rq = rotary.rotate(q, torch.tensor([pq]))
        rk = rotary.rotate(k, torch.tensor([pk]))
        return float((rq * rk).sum())

    for pq, pk in [(5, 2), (40, 0), (3, 3), (0, 9)]:
        ref = score(pq, pk)
        for shift in (1, 17, 250):
            assert score(pq + shift, pk + shift) == pytest.approx(ref, rel=1e-4, abs=1e-4)
    assert score(10, 0) != pytest.approx(score(11, 0), rel=1e-3)


def test_low_precision_computes_in_float32():
    x = randn(2, 8, 2, 64, seed=5, dtype=torch.bfloat16)
    cos, sin = tables(torch.arange(8) + 100, 64)
    out = apply_rope(x, cos[:, None], sin[:, None])
    assert out.dtype == torch.bfloat16
    expected = apply_rope(x.float(), cos[:, None], sin[:, None]).to(torch.bfloat16)
    assert torch.equal(out, expected)


def test_float64_stays_float64():
    x = randn(1, 5, 1, 16, dtype=torch.float64)
    pos = torch.arange(5)
    cos, sin = tables64(pos, 16)  # [s, 8]
    out = apply_rope(x, cos[:, None], sin[:, None])
    assert out.dtype == torch.float64
    check(out, oracle(x, pos), dtype=torch.float64)


def test_broadcast_batch_tables_and_rank_2():
    x = randn(3, 7, 2, 16, seed=6)
    pos = torch.stack([torch.arange(7) + o for o in (0, 4, 9)])  # [b, s]
    cos, sin = tables(pos, 16)  # [b, s, 8]
    out = apply_rope(x, cos[:, :, None], sin[:, :, None])
    check(out, oracle(x, pos))
    x2 = randn(7, 16, seed=7)  # [s, d]
    c2, s2 = tables(torch.arange(7), 16)
    check(apply_rope(x2, c2, s2), oracle(x2[None, :, None], torch.arange(7))[0, :, 0])


def test_gradcheck():
    x = randn(1, 3, 2, 8, dtype=torch.float64).requires_grad_()
    ang = randn(3, 1, 4, seed=8, dtype=torch.float64)
    cos, sin = ang.cos().requires_grad_(), ang.sin().requires_grad_()
    for style in STYLES:
        assert torch.autograd.gradcheck(
            lambda a, c, s, st=style: apply_rope(a, c, s, style=st, rotary_dim=6),
            (x, cos[..., :3], sin[..., :3]))


# ----------------------------------------------------------------------------------- rope


@pytest.mark.parametrize("style", STYLES)
def test_rope_default_layout_and_int_offset(style):
    x = randn(2, 11, 3, 32, seed=9)  # [b, s, h, d]
    check(rope(x, style=style), oracle(x, torch.arange(11), style=style))
    check(rope(x, offset=128, style=style), oracle(x, torch.arange(11) + 128, style=style))
    check(rope(x, offset=torch.tensor(128), style=style),
          oracle(x, torch.arange(11) + 128, style=style))


def test_rope_per_sequence_offset():
    x = randn(3, 4, 2, 32, seed=10)
    offsets = torch.tensor([0, 17, 300], dtype=torch.int32)
    expected_pos = offsets[:, None].long() + torch.arange(4)  # [b, s]
    check(rope(x, offset=offsets), oracle(x, expected_pos))
    check(rope(x, positions=expected_pos), oracle(x, expected_pos))


def test_rope_decode_single_token_per_sequence_offset():
    x = randn(4, 1, 8, 64, seed=11)  # one new token per sequence
    offsets = torch.tensor([5, 0, 31, 2])
    check(rope(x, offset=offsets), oracle(x, offsets[:, None]))


@pytest.mark.parametrize("seq_dim", [-2, 2])
def test_rope_seq_dim_heads_before_seq(seq_dim):
    x = randn(2, 3, 9, 16, seed=12)  # [b, h, s, d] (Kaun-style seq_dim=-2)
    out = rope(x, seq_dim=seq_dim, offset=torch.tensor([1, 6]))
    ref = oracle(x.transpose(1, 2), torch.tensor([[1], [6]]) + torch.arange(9)).transpose(1, 2)
    check(out, ref)


def test_rope_seq_dim_rank_3_and_5():
    x3 = randn(2, 9, 16, seed=13)  # [b, s, d]
    check(rope(x3, seq_dim=1, offset=4), oracle(x3[:, :, None], torch.arange(9) + 4)[:, :, 0])
    x5 = randn(2, 5, 2, 3, 16, seed=14)  # [b, s, g, h, d], seq on axis 1
    flat = x5.flatten(2, 3)  # [b, s, g*h, d]
    check(rope(x5, seq_dim=1), oracle(flat, torch.arange(5)).unflatten(2, (2, 3)))


def test_rope_explicit_document_positions():
    x = randn(2, 10, 2, 32, seed=15)
    pos = positions_from_boundaries(torch.tensor([[True] + [False] * 3 + [True] + [False] * 5,
                                                  [False] * 6 + [True] + [False] * 3]), 10)
    assert pos[0, 4] == 0 and pos[1, 6] == 0
    cos, sin = tables(pos, 32)
    check(rope(x, positions=pos), apply_rope(x, cos[:, :, None], sin[:, :, None]))
    check(rope(x, positions=pos[1]), oracle(x, pos[1]))


@pytest.mark.parametrize("style", STYLES)
def test_rope_2d_head_dim(style):
    heads, d = 4, 16
    x = randn(9, heads * d, seed=16)  # [s, h*d] (Meganeura)
    out = rope(x, head_dim=d, offset=7, style=style)
    assert out.shape == x.shape
    per_head = oracle(x.view(1, 9, heads, d), torch.arange(9) + 7, style=style)
    check(out, per_head.view(9, heads * d))
    xb = randn(2, 9, heads * d, seed=17)  # [b, s, h*d]
    outb = rope(xb, head_dim=d, offset=torch.tensor([0, 3]), style=style)
    ref = oracle(xb.view(2, 9, heads, d), torch.tensor([[0], [3]]) + torch.arange(9), style=style)
    check(outb, ref.view(2, 9, heads * d))


def test_rope_partial_and_scaling_match_rotary_embedding():
    x = randn(2, 12, 2, 64, seed=18)
    for scaling in (LinearScaling(2.0), YarnScaling(factor=4.0, original_max_positions=8),
                    DynamicNTKScaling(factor=2.0, original_max_positions=8)):
        rotary = RotaryEmbedding(64, rotary_dim=32, scaling=scaling, theta=500.0)
        pos = torch.arange(12) + 3
        expected = rotary.rotate(x, pos)
        got = rope(x, offset=3, rotary_dim=32, scaling=scaling, theta=500.0)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    check(rope(x, scaling=LinearScaling(2.0)), oracle(x, torch.arange(12), freq_scale=0.5))


# ------------------------------------------------------------------------ RotaryEmbedding


def test_rotary_tables_and_buffer():
    rotary = RotaryEmbedding(64, theta=10000.0)
    assert rotary.inv_freq.dtype == torch.float32 and rotary.inv_freq.shape == (32,)
    assert rotary.state_dict() == {}
    rotary.load_state_dict({}, strict=True)
    cos, sin = rotary(torch.arange(6))
    assert cos.shape == (6, 32) and cos.dtype == torch.float32
    cos_b, _ = rotary(torch.arange(6).expand(3, 6))
    assert cos_b.shape == (3, 6, 32)
    x = randn(3, 6, 2, 64, seed=19)
    check(rotary.rotate(x, torch.arange(6)), oracle(x, torch.arange(6)))


def test_rotary_attention_factor_scales_tables():
    scaling = YarnScaling(factor=8.0, original_max_positions=32)
    rotary = RotaryEmbedding(16, scaling=scaling)
    assert rotary.attention_factor == pytest.approx(0.1 * math.log(8.0) + 1.0)
    cos, sin = rotary(torch.arange(5))
    torch.testing.assert_close(cos.square() + sin.square(),
                               torch.full((5, 8), rotary.attention_factor ** 2))


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def rotate_pairs(x):
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((-b, a), dim=-1).flatten(-2)


@pytest.mark.parametrize("style", STYLES)
def test_full_width_tables_follow_hf_formula(style):
    rotary = RotaryEmbedding(32, style=style)
    x = randn(2, 7, 3, 32, seed=20)
    pos = torch.arange(7).expand(2, 7)
    cos, sin = rotary(pos, full_width=True)  # [b, s, d]
    assert cos.shape == (2, 7, 32)
    turn = rotate_half if style == "half" else rotate_pairs
    hf_style = x * cos[:, :, None] + turn(x) * sin[:, :, None]
    torch.testing.assert_close(rotary.rotate(x, pos), hf_style, rtol=1e-6, atol=1e-6)


def test_rotary_dynamic_ntk_recomputes_beyond_max_positions():
    scaling = DynamicNTKScaling(factor=2.0, original_max_positions=16)
    rotary = RotaryEmbedding(32, scaling=scaling)
    assert rotary.max_positions == 16
    plain, _ = rope_inv_freq(32, theta=10000.0)
    assert torch.equal(rotary.inv_freq, plain)
    short_cos, _ = rotary(torch.arange(16))
    assert torch.equal(short_cos, rope_cos_sin(torch.arange(16), plain)[0])
    long_pos = torch.arange(40)
    long_cos, long_sin = rotary(long_pos)
    grown, _ = rope_inv_freq(32, theta=10000.0, scaling=scaling, seq_len=40)
    assert torch.equal(long_cos, rope_cos_sin(long_pos, grown)[0])
    assert not torch.equal(long_cos[:16], short_cos)
    assert torch.equal(rotary.inv_freq, plain)  # stateless: the buffer is unchanged


def test_rotary_reset_after_meta_to_empty():
    expected = RotaryEmbedding(64, theta=500000.0, rotary_dim=48)
    with torch.device("meta"):
        rotary = RotaryEmbedding(64, theta=500000.0, rotary_dim=48)
    assert rotary.inv_freq.is_meta
    rotary.to_empty(device="cpu")
    rotary.reset_parameters()
    assert torch.equal(rotary.inv_freq, expected.inv_freq)


def test_rotary_cast_to_bfloat16_keeps_full_precision():
    rotary = RotaryEmbedding(64)
    expected = rotary(torch.arange(4000, 4010))
    rotary.to(torch.bfloat16)
    got = rotary(torch.arange(4000, 4010))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_rotary_repr():
    text = repr(RotaryEmbedding(64, rotary_dim=32, scaling=LinearScaling(2.0)))
    assert "rotary_dim=32" in text and "LinearScaling(factor=2.0)" in text


def test_matches_transformers_llama():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    config = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64,
                         max_position_embeddings=64)
    hf = LlamaRotaryEmbedding(config)
    q = randn(2, 4, 10, 64, seed=21)  # HF layout [b, h, s, d]
    k = randn(2, 4, 10, 64, seed=22)
    pos = torch.arange(10).expand(2, 10) + 5
    cos, sin = hf(q, pos)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin)
    ours = RotaryEmbedding(64, theta=float(getattr(config, "rope_theta", None) or 10000.0))
    assert ours.state_dict().keys() == hf.state_dict().keys()
    torch.testing.assert_close(ours(pos, full_width=True)[0], cos, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rope(q, seq_dim=2, positions=pos), hf_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rope(k, seq_dim=2, positions=pos), hf_k, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------- errors


def test_apply_rope_errors():
    x = randn(2, 5, 3, 16)
    cos, sin = tables(torch.arange(5), 16)
    cos, sin = cos[:, None], sin[:, None]  # [s, 1, 8]
    with pytest.raises(ValueError, match=r"x must have rank >= 2 .* got a 1-D tensor of shape \(16,\)"):
        apply_rope(x[0, 0, 0], cos, sin)
    with pytest.raises(ValueError, match=r"style must be one of 'half', 'interleaved', got 'neox'"):
        apply_rope(x, cos, sin, style="neox")
    with pytest.raises(ValueError, match=r"head dim \(last dim of x\) must be even for RoPE, got 15"):
        apply_rope(x[..., :15], cos, sin)
    with pytest.raises(ValueError, match=r"rotary_dim must be even, got 7"):
        apply_rope(x, cos, sin, rotary_dim=7)
    with pytest.raises(ValueError, match=r"rotary_dim \(32\) must be <= head dim \(16\)"):
        apply_rope(x, cos, sin, rotary_dim=32)
    with pytest.raises(TypeError, match=r"rotary_dim must be an int, got float"):
        apply_rope(x, cos, sin, rotary_dim=8.0)
    with pytest.raises(ValueError, match=r"sin must have the shape of cos \(5, 1, 8\), got \(5, 1, 4\)"):
        apply_rope(x, cos, sin[..., :4])
    with pytest.raises(ValueError, match=r"cos must have last dim rotary_dim // 2 = 8, got shape "
                                         r"\(5, 1, 16\) \(this looks like a full-width"):
        apply_rope(x, cos.repeat(1, 1, 2), sin.repeat(1, 1, 2))
    with pytest.raises(ValueError, match=r"got shape \(5, 1, 4\); for partial rotary pass rotary_dim="):
        apply_rope(x, cos[..., :4], sin[..., :4])
    with pytest.raises(ValueError, match=r"cos must broadcast against x .* to \(2, 5, 3, 8\), got "
                                         r"shape \(6, 1, 8\)"):
        apply_rope(x, cos.repeat(2, 1, 1)[:6], sin.repeat(2, 1, 1)[:6])
    with pytest.raises(ValueError, match=r"cos must broadcast against x .* got shape \(1, 2, 5, 1, 8\)"):
        apply_rope(x, cos.expand(1, 2, 5, 1, 8), sin.expand(1, 2, 5, 1, 8))
    with pytest.raises(TypeError, match=r"sin must have the dtype of cos \(torch.float32\), got torch.float64"):
        apply_rope(x, cos, sin.double())
    with pytest.raises(ValueError, match=r"cos must be on the device of x \(cpu\), got meta"):
        apply_rope(x, cos.to("meta"), sin.to("meta"))
    with pytest.raises(TypeError, match=r"x must be float16, bfloat16, float32 or float64, got torch.int64"):
        apply_rope(x.long(), cos, sin)
    with pytest.raises(TypeError, match=r"cos must be a torch.Tensor, got list"):
        apply_rope(x, [1.0], sin)


def test_rope_errors():
    x = randn(2, 5, 3, 16)
    with pytest.raises(ValueError, match=r"x must have rank >= 2 .* got a 1-D"):
        rope(x[0, 0, 0])
    with pytest.raises(ValueError, match=r"seq_dim \(4\) must be in \[-4, 3\] for x of shape \(2, 5, 3, 16\)"):
        rope(x, seq_dim=4)
    with pytest.raises(ValueError, match=r"seq_dim \(-1\) must not be the last axis of x"):
        rope(x, seq_dim=-1)
    with pytest.raises(ValueError, match=r"seq_dim \(-3\) must be in \[-2, 1\]"):
        rope(x[0, 0])  # [h, d] has no axis -3: pass seq_dim or head_dim
    with pytest.raises(ValueError, match=r"head_dim \(5\) must divide the last dim of x \(16\)"):
        rope(x, head_dim=5)
    with pytest.raises(ValueError, match=r"head dim \(last dim of x\) must be even for RoPE, got 3"):
        rope(x[..., :15], head_dim=3, seq_dim=1)
    with pytest.raises(ValueError, match=r"offset must be >= 0, got -3"):
        rope(x, offset=-3)
    with pytest.raises(ValueError, match=r"offset must be >= 0, got \[1, -1\]"):
        rope(x, offset=torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r"offset must have one entry per sequence \[2\] \(x.shape\[0\]\), "
                                         r"got shape \(3,\)"):
        rope(x, offset=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match=r"offset must be an integer tensor .* got torch.float32"):
        rope(x, offset=torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"offset must be an int or an int tensor \[batch\], got float"):
        rope(x, offset=2.5)
    with pytest.raises(ValueError, match=r"axis 0 of x is the batch .* must differ from seq_dim"):
        rope(randn(5, 32), head_dim=16, offset=torch.tensor([1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match=r"pass either offset or positions, not both"):
        rope(x, offset=1, positions=torch.arange(5))
    with pytest.raises(ValueError, match=r"positions must have shape \[5\] or \[2, 5\] .* got \(4,\)"):
        rope(x, positions=torch.arange(4))
    with pytest.raises(TypeError, match=r"positions must be an integer tensor .* got torch.float32"):
        rope(x, positions=torch.arange(5.0))
    with pytest.raises(ValueError, match=r"positions must be on the device of x \(cpu\), got meta"):
        rope(x, positions=torch.arange(5, device="meta"))
    with pytest.raises(ValueError, match=r"offset must be on the device of x \(cpu\), got meta"):
        rope(x, offset=torch.tensor([1, 2], device="meta"))
    with pytest.raises(ValueError, match=r"theta must be a finite number > 1, got 0.5"):
        rope(x, theta=0.5)
    with pytest.raises(TypeError, match=r"scaling must be None, LinearScaling, .* got float"):
        rope(x, scaling=2.0)
    with pytest.raises(ValueError, match=r"style must be one of 'half', 'interleaved', got 'gptj'"):
        rope(x, style="gptj")


def test_rotary_embedding_errors():
    with pytest.raises(ValueError, match=r"head dim \(last dim of x\) must be even for RoPE, got 63"):
        RotaryEmbedding(63)
    with pytest.raises(ValueError, match=r"rotary_dim \(128\) must be <= head dim \(64\)"):
        RotaryEmbedding(64, rotary_dim=128)
    with pytest.raises(ValueError, match=r"rotary_dim must be even, got 31"):
        RotaryEmbedding(64, rotary_dim=31)
    with pytest.raises(ValueError, match=r"style must be one of 'half', 'interleaved', got 'x'"):
        RotaryEmbedding(64, style="x")
    with pytest.raises(ValueError, match=r"max_positions must be >= 1, got 0"):
        RotaryEmbedding(64, max_positions=0)
    with pytest.raises(TypeError, match=r"head_dim must be an int, got float"):
        RotaryEmbedding(64.0)
    rotary = RotaryEmbedding(16)
    with pytest.raises(TypeError, match=r"positions must be an integer tensor .* got torch.float32"):
        rotary(torch.arange(4.0))
    with pytest.raises(ValueError, match=r"positions must be \[seq\] or \[batch, seq\], got shape \(1, 2, 3\)"):
        rotary(torch.zeros(1, 2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"positions must be on the module's device \(cpu\), got meta"):
        rotary(torch.arange(3, device="meta"))
    with pytest.raises(ValueError, match=r"x must be \[batch, seq, heads, head_dim=16\], got shape \(2, 5, 8\)"):
        rotary.rotate(randn(2, 5, 8), torch.arange(5))
    with pytest.raises(ValueError, match=r"positions must have shape \[5\] or \[2, 5\] to match x"):
        rotary.rotate(randn(2, 5, 1, 16), torch.arange(4))
