"""The Triton flash-attention kernels under ``TRITON_INTERPRET=1`` (CPU CI), tiny shapes.

Every case runs forward and all gradients through ``attnkit.attention(backend="triton")`` and
checks them against the float64 oracle by the tolerance rule (``tests/flash_check.py``). The
interpreter is slow, so shapes are small but awkward (17, 33, unequal lengths, head dims 80/96
and 192/128). bf16 is covered by the GPU suite: Triton's interpreter has no bf16.
"""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit.ops import backends
from tests.flash_check import Case, check

needs_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1")
pytest.importorskip("triton")

F32 = torch.float32
CASES = {
    "mha": Case((2, 17, 17, 2, 2, 32, 32)),
    "gqa-causal-sq>sk-d80-dv48": Case((2, 33, 17, 4, 2, 80, 48), causal=True),
    "causal-sk>sq": Case((1, 17, 33, 2, 2, 32, 32), causal=True),
    "mqa-d96-dv64": Case((1, 17, 17, 4, 1, 96, 64), causal=True),
    "sliding-window": Case((1, 33, 33, 2, 1, 32, 32), causal=True, window=(5, 0)),
    "window-both": Case((1, 33, 40, 2, 1, 32, 32), window=(3, 7)),
    "window-right": Case((1, 17, 17, 2, 2, 32, 32), window=(-1, 2)),
    "softcap": Case((1, 17, 17, 2, 1, 32, 32), causal=True, softcap=2.0),
    "key-padding": Case((2, 17, 17, 2, 1, 32, 32), kpm=True),
    "bool-mask-full": Case((2, 17, 19, 2, 1, 32, 32), mask=("bool", "full")),
    "bool-mask-rows-causal": Case((2, 17, 17, 2, 2, 32, 32), causal=True, mask=("bool", "rows")),
    "additive-mask-heads": Case((2, 17, 17, 2, 1, 32, 32), mask=("additive", "heads")),
    "additive-mask-keys-kpm": Case((2, 17, 17, 2, 1, 32, 32), kpm=True,
                                   mask=("additive", "keys")),
    "dropout": Case((2, 17, 17, 2, 1, 32, 32), causal=True, dropout_p=0.3),
    "packed-empty-segments": Case((0, 0, 0, 2, 1, 32, 32), causal=True,
                                  segments=((5, 9), (0, 3), (17, 17), (4, 0), (1, 6))),
    "packed-window-dropout": Case((0, 0, 0, 2, 2, 32, 32), window=(2, 1), dropout_p=0.2,
                                  segments=((7, 7), (19, 11))),
    "mla-d192-dv128": Case((1, 17, 17, 2, 1, 192, 128), causal=True),
    "decode-sq1": Case((2, 1, 29, 4, 2, 32, 32), causal=True),
    "lse-gradient": Case((1, 17, 23, 2, 1, 32, 32), causal=True, lse_grad=True),
    "custom-scale": Case((1, 17, 17, 2, 1, 32, 32), options={"scale": 0.3}),
}


@needs_kernels
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_kernels_match_oracle_fp32(case):
    check(case, dtype=F32, device="cpu")


@needs_kernels
@pytest.mark.parametrize("dq_mode", ["atomic", "kernel"])
def test_fp16_and_both_backward_modes(dq_mode):
    case = Case((2, 33, 17, 4, 2, 80, 48), causal=True, kpm=True)
    check(case, dtype=torch.float16, device="cpu", deterministic=dq_mode != "atomic",
          dq_mode=dq_mode)


@needs_kernels
@pytest.mark.parametrize("case", ["packed-window-dropout", "bool-mask-rows-causal",
                                  "mla-d192-dv128"])
def test_backward_without_atomics(case):
    check(CASES[case], dtype=F32, device="cpu", deterministic=True, dq_mode="kernel")


@needs_kernels
def test_deterministic_backward_is_reproducible():
    case = Case((1, 33, 33, 4, 1, 32, 32), causal=True)
    first = check(case, dtype=F32, device="cpu", deterministic=True)
    second = check(case, dtype=F32, device="cpu", deterministic=True)
    for name in ("dq", "dk", "dv"):
        assert torch.equal(first[name], second[name]), name


@needs_kernels
def test_fully_masked_rows_zero_out_minus_inf_lse_zero_grads():
    q = torch.randn(1, 9, 2, 32, requires_grad=True)
    k = torch.randn(1, 4, 2, 32, requires_grad=True)
    v = torch.randn(1, 4, 2, 32, requires_grad=True)
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True, backend="triton")
    # sq 9 > sk 4, bottom-right causal: the first 5 queries see no key.
    assert torch.all(out[:, :5] == 0)
    assert torch.all(lse[:, :, :5] == -math.inf)
    out.sum().backward()
    assert torch.all(q.grad[:, :5] == 0)
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_auto_never_picks_the_interpreter():
    q = torch.randn(1, 5, 2, 32)
    assert backends.select(_call(q), "auto").name == "reference"


def _call(q, **overrides):
    from attnkit.ops.attention import _validate
    opts = dict(causal=False, window=(-1, -1), scale=None, softcap=0.0, key_padding_mask=None,
                attn_mask=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                max_seqlen_k=None, dropout_p=0.0, generator=None, return_lse=False,
                backend="triton")
    opts.update(overrides)
    return _validate(q, q, q, **opts)


@needs_kernels
def test_unsupported_calls_say_why():
    q = torch.randn(1, 5, 2, 32, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"triton: float64 is not supported by the kernels; "
                                         r"use backend='reference'"):
        attnkit.attention(q, q, q, backend="triton")
    wide = torch.randn(1, 5, 2, 320)
    with pytest.raises(ValueError, match=r"head dims up to 256 are supported by the kernels, got "
                                         r"q/k 320 and v 320"):
        attnkit.attention(wide, wide, wide, backend="triton")
    q = torch.randn(1, 5, 2, 32)
    mask = torch.zeros(5, 5, requires_grad=True)
    with pytest.raises(ValueError, match=r"attn_mask requires grad: the kernels do not compute"):
        attnkit.attention(q, q, q, attn_mask=mask, backend="triton")


def test_cpu_without_interpreter_names_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 5, 2, 32)
    with pytest.raises(ValueError, match=r"inputs are on cpu: the Triton kernels need CUDA "
                                         r"tensors \(set TRITON_INTERPRET=1"):
        attnkit.attention(q, q, q, backend="triton")


def test_deterministic_must_be_bool():
    q = torch.randn(1, 5, 2, 32)
    with pytest.raises(TypeError, match=r"deterministic must be a bool, got int"):
        attnkit.attention(q, q, q, deterministic=1)


@needs_kernels
def test_torch_compile_fullgraph_matches_eager():
    def block(q, k, v):
        return attnkit.attention(q, k, v, causal=True, backend="triton") * 2

    q = torch.randn(1, 17, 2, 32, requires_grad=True)
    k = torch.randn(1, 17, 1, 32, requires_grad=True)
    v = torch.randn(1, 17, 1, 32, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = compiled(q, k, v)
    got.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    want = block(q, k, v)
    want.sum().backward()
    assert torch.equal(got, want)
    for g, t in zip(grads, (q, k, v)):
        assert torch.equal(g, t.grad)


@needs_kernels
def test_opcheck_custom_ops():
    from attnkit.ops import custom_ops  # noqa: F401  (registers the ops)
    q = torch.randn(1, 17, 2, 32, requires_grad=True)
    k = torch.randn(1, 20, 1, 32, requires_grad=True)
    v = torch.randn(1, 20, 1, 16, requires_grad=True)
    args = (q, k, v, None, None, None, None, True, -1, -1, 0.125, 0.0, 17, 20, 0.0, 0, True)
    torch.library.opcheck(torch.ops.attnkit.flash_attn_fwd.default, args)


@needs_kernels
def test_tile_ranges_cover_the_visible_band_and_skip_the_rest():
    """Key ranges of query tiles (forward, dQ) and query ranges of key tiles (dK/dV)."""
    from tests.flash_tiles import check_key_ranges, check_query_ranges
    rng = torch.Generator().manual_seed(0)
    for _ in range(25):
        sq, sk = (int(x) for x in torch.randint(1, 90, (2,), generator=rng))
        causal = bool(torch.randint(0, 2, (1,), generator=rng))
        left, right = (int(x) - 1 for x in torch.randint(0, 40, (2,), generator=rng))
        window = (left if left < 30 else -1, right if right < 30 else -1)
        for block_m, block_n in ((16, 16), (16, 32), (32, 16)):
            check_key_ranges(sq, sk, causal, window, block_m, block_n)
            check_query_ranges(sq, sk, causal, window, block_m, block_n)


@needs_kernels
def test_use_deterministic_algorithms_selects_the_dq_kernel(monkeypatch):
    from attnkit.ops.attention import _validate
    q = torch.randn(1, 5, 2, 32)
    opts = dict(causal=False, window=(-1, -1), scale=None, softcap=0.0, key_padding_mask=None,
                attn_mask=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                max_seqlen_k=None, dropout_p=0.0, generator=None, return_lse=False,
                backend="triton")
    assert not _validate(q, q, q, **opts).deterministic
    assert _validate(q, q, q, deterministic=True, **opts).deterministic
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert _validate(q, q, q, **opts).deterministic


@needs_kernels
def test_additive_mask_of_finfo_min_matches_reference():
    """Hugging Face padding masks use finfo.min, not -inf: a row masked only by them is a
    uniform softmax in the reference, and must stay one in the kernels (no overflow to -inf)."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 9, 2, 32, generator=g).requires_grad_() for _ in range(3))
    mask = torch.zeros(2, 1, 9, 9)
    mask[0, :, :, 5:] = torch.finfo(torch.float32).min  # padded keys
    mask[1, :, 3] = torch.finfo(torch.float32).min  # a query row that sees nothing
    mask[1, :, 4] = float("-inf")  # a row masked with -inf: zeros and lse -inf
    want, want_lse = attnkit.attention(q, k, v, attn_mask=mask, return_lse=True,
                                       backend="reference")
    got, got_lse = attnkit.attention(q, k, v, attn_mask=mask, return_lse=True, backend="triton")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.all(got[1, 4] == 0) and torch.all(got_lse[1, :, 4] == -math.inf)
    assert torch.equal(torch.isfinite(want_lse), torch.isfinite(got_lse))
    # The uniform row's LSE is finfo.min-sized (its exact value depends on the clamp).
    huge = torch.isfinite(want_lse) & (want_lse < -1e30)
    assert torch.all(got_lse[huge] < -1e37)
    normal = torch.isfinite(want_lse) & ~huge
    assert torch.allclose(got_lse[normal], want_lse[normal], rtol=1e-5, atol=1e-5)
    grad = torch.randn(got.shape, generator=g)
    grad[1, 3] = 0  # the saturated row is padding: its output carries no gradient (see the
    # Triton backend's docstring: its own gradient is not the reference's saturated one)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    got_grads = torch.autograd.grad(got, (q, k, v), grad)
    for w, gg in zip(want_grads, got_grads):
        torch.testing.assert_close(gg, w, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_strided_views_of_a_fused_projection():
    """q, k, v sliced from one fused [b, s, (hq + 2 hk) * d] projection: strided, no copies."""
    g = torch.Generator().manual_seed(7)
    fused = torch.randn(2, 19, (4 + 2 * 2) * 32, generator=g, requires_grad=True)
    q, k, v = fused.view(2, 19, 8, 32).split([4, 2, 2], dim=2)  # views with row stride 256
    assert not q.is_contiguous()
    got = attnkit.attention(q, k, v, causal=True, backend="triton")
    want = attnkit.attention(q, k, v, causal=True, backend="reference")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    grad = torch.randn(got.shape, generator=g)
    (g_got,) = torch.autograd.grad(got, fused, grad)
    (g_want,) = torch.autograd.grad(want, fused, grad)
    torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("shape", [(2, 5, 0), (2, 0, 5), (0, 5, 5)], ids=["no-keys", "no-queries",
                                                                          "no-batch"])
def test_empty_sequences(shape):
    b, sq, sk = shape
    q = torch.randn(b, sq, 2, 32, requires_grad=True)
    k = torch.randn(b, sk, 1, 32, requires_grad=True)
    v = torch.randn(b, sk, 1, 32, requires_grad=True)
    out, lse = attnkit.attention(q, k, v, return_lse=True, backend="triton")
    assert out.shape == (b, sq, 2, 32) and lse.shape == (b, 2, sq)
    assert torch.all(out == 0) and torch.all(lse == -math.inf)
    out.sum().backward()
    assert all(torch.all(t.grad == 0) for t in (q, k, v))


@needs_kernels
def test_opcheck_with_masks_and_packed_inputs():
    from attnkit.ops import custom_ops  # noqa: F401  (registers the ops)
    q = torch.randn(1, 9, 2, 32, requires_grad=True)
    k = torch.randn(1, 11, 1, 32, requires_grad=True)
    v = torch.randn(1, 11, 1, 32, requires_grad=True)
    kpm = torch.rand(1, 11) > 0.2
    mask = torch.randn(1, 2, 9, 11)
    torch.library.opcheck(torch.ops.attnkit.flash_attn_fwd.default,
                          (q, k, v, kpm, mask, None, None, False, 3, 2, 0.2, 0.0, 9, 11, 0.0, 0,
                           True))
    cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32)
    qp = torch.randn(9, 2, 32, requires_grad=True)
    kp = torch.randn(9, 1, 32, requires_grad=True)
    vp = torch.randn(9, 1, 32, requires_grad=True)
    torch.library.opcheck(torch.ops.attnkit.flash_attn_fwd.default,
                          (qp, kp, vp, None, None, cu, cu, True, -1, -1, 0.2, 0.0, 5, 5, 0.0, 0,
                           False))


def test_missing_triton_keeps_the_reference_and_says_why(monkeypatch):
    import sys

    import attnkit.ops
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    monkeypatch.delitem(sys.modules, "attnkit.ops._triton_backend", raising=False)
    monkeypatch.delitem(sys.modules, "attnkit.kernels.flash_common", raising=False)
    monkeypatch.delattr(attnkit.ops, "_triton_backend", raising=False)
    monkeypatch.setattr(backends, "_REGISTRY", {"reference": backends.REFERENCE})
    monkeypatch.setattr(backends, "_LOAD_FAILED", {})
    monkeypatch.setattr(backends, "_UNREGISTERED", dict(backends._UNREGISTERED))
    q = torch.randn(1, 5, 2, 32)
    with pytest.raises(ValueError, match=r"triton: triton is not installed \(pip install triton\)"):
        attnkit.attention(q, q, q, backend="triton")
    assert attnkit.attention(q, q, q).shape == q.shape  # "auto" serves it with the reference


@needs_kernels
def test_launch_configs_for_fp32_and_masks(monkeypatch):
    """The configs a GPU launch may try (the interpreter always uses one 16x16 config)."""
    from attnkit.kernels import flash_bwd, flash_fwd
    from attnkit.kernels.flash_common import FP32_TILES, MASKED_TILE_AREA, tile_configs
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("ATTNKIT_FLASH_TUNE", raising=False)
    for width, (queries, keys) in FP32_TILES.items():
        (fwd,) = tile_configs(flash_fwd.FWD_TILES, width, fp32=True)
        assert (fwd.kwargs, fwd.num_stages) == ({"BLOCK_M": queries, "BLOCK_N": keys}, 1)
    masked = tile_configs(flash_fwd.FWD_TILES, 128, masked=True)
    assert masked and all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= MASKED_TILE_AREA
                          and c.num_stages <= 2 for c in masked)
    assert len(tile_configs(flash_bwd.DKDV_TILES, 80)) == len(flash_bwd.DKDV_TILES[128])
    monkeypatch.setenv("ATTNKIT_FLASH_TUNE", "0")
    assert len(tile_configs(flash_bwd.DKDV_TILES, 80)) == 1


@needs_kernels
def test_dq_path_choice_and_override(monkeypatch):
    """Atomics only where the H200 runs measured them faster than the two-launch paths (MHA
    at 4k+ without descriptors); the override wins."""
    from attnkit.kernels.flash_bwd import _atomic_dq_pays
    monkeypatch.delenv("ATTNKIT_FLASH_DQ", raising=False)
    assert _atomic_dq_pays(1, 4096, 128)
    for head_dim in (64, 128):  # with descriptors: two launches
        assert not _atomic_dq_pays(1, 16384, head_dim, tma=True)
    assert not _atomic_dq_pays(1, 16384, 128, window=True)  # windows: two launches
    for group, seq_q, head_dim in ((4, 4096, 128), (1, 1024, 128), (1, 4096, 192)):
        assert not _atomic_dq_pays(group, seq_q, head_dim)  # GQA, short, wide heads
    monkeypatch.setenv("ATTNKIT_FLASH_DQ", "atomic")
    assert _atomic_dq_pays(4, 64, 64)
    monkeypatch.setenv("ATTNKIT_FLASH_DQ", "kernel")
    assert not _atomic_dq_pays(1, 4096, 128)


@needs_kernels
@pytest.mark.parametrize("case", ["gqa-causal-sq>sk-d80-dv48", "packed-empty-segments",
                                  "sliding-window", "bool-mask-rows-causal", "mla-d192-dv128",
                                  "causal-sk>sq"])
@pytest.mark.parametrize("dq_mode", ["atomic", "kernel"])
def test_tma_descriptor_tiles_match_oracle(case, dq_mode):
    """Every kernel reading its tiles through tensor descriptors (zero fill past a segment's
    rows and a padded head dim) matches the oracle in both dQ modes (fp16: TMA is 16-bit)."""
    check(CASES[case], dtype=torch.float16, device="cpu", deterministic=dq_mode != "atomic",
          dq_mode=dq_mode, tma="all")


def test_tma_choice_and_alignment_rules(monkeypatch):
    """``ATTNKIT_FLASH_TMA`` names the kernels that read through descriptors; tensors that break
    TMA's 16-byte rules (or are float32) keep the pointer loads; a bad value names the choices."""
    from attnkit.kernels import flash_common as fc
    monkeypatch.delenv("ATTNKIT_FLASH_TMA", raising=False)
    assert fc.tma_kernels() == fc.TMA_DEFAULT
    monkeypatch.setenv("ATTNKIT_FLASH_TMA", "none")
    assert fc.tma_kernels() == frozenset()
    monkeypatch.setenv("ATTNKIT_FLASH_TMA", "all")
    assert fc.tma_kernels() == frozenset(fc.TMA_KERNELS)
    monkeypatch.setenv("ATTNKIT_FLASH_TMA", "fwd, dq")
    assert fc.tma_kernels() == {"fwd", "dq"}
    monkeypatch.setenv("ATTNKIT_FLASH_TMA", "fwd,dkv")
    with pytest.raises(ValueError, match="ATTNKIT_FLASH_TMA.*'fwd,dkv'"):
        fc.tma_kernels()
    q = torch.randn(2, 16, 4, 80, dtype=torch.float16)
    assert fc.tma_aligned(q)
    assert fc.tma_aligned(q[:, :, :1])  # one head: its stride is never used
    assert not fc.tma_aligned(q.float())
    assert not fc.tma_aligned(torch.randn(2, 16, 4, 84, dtype=torch.float16)[..., :80])
    shifted = torch.randn(q.numel() + 1, dtype=torch.float16)[1:].view(q.shape)
    assert not fc.tma_aligned(shifted)  # starts 2 bytes off a 16-byte boundary
    monkeypatch.setenv("ATTNKIT_FLASH_TMA", "auto")
    assert not fc.use_tma("dkdv", q)  # the interpreter takes TMA only when asked explicitly
