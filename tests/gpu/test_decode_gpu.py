"""The decode kernels on a GPU: issue 6's full matrix against the float64 oracle (tolerance rule).

Ragged lengths 1 to 10k, block sizes 16/64/256 and contiguous, GQA 1/4/8/16, 1 to 8 new tokens,
windows, softcap; bf16 and fp16; MLA absorbed decode. Run with ``pytest -m gpu`` on a CUDA machine.
"""

from __future__ import annotations

import pytest
import torch

import attnkit
from tests.decode_cases import make_case, truth
from tests.tolerance import assert_within_rule

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

LENGTHS = [1, 10000, 17, 4096, 333, 2]
BLOCKS = {"contig": None, "bs16": 16, "bs64": 64, "bs256": 256}
GROUPS = [1, 4, 8, 16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("group", GROUPS, ids=[f"gqa{g}" for g in GROUPS])
@pytest.mark.parametrize("block_size", BLOCKS.values(), ids=BLOCKS.keys())
def test_matrix(block_size, group, n, dtype):
    case = make_case(lengths=LENGTHS, n=n, hq=2 * group, hk=2, d=128, block_size=block_size,
                     dtype=dtype, device="cuda", seed=group * 10 + n)
    out, lse = attnkit.decode_attention(**case, return_lse=True, backend="triton")
    ref_out, ref_lse = truth(case)
    base_out, base_lse = truth(case, dtype=torch.float32 if dtype == torch.float32 else dtype)
    assert_within_rule("out", out.cpu(), ref_out, base_out, dtype=dtype)
    assert_within_rule("lse", lse.cpu(), ref_lse, base_lse, dtype=dtype)


OPTIONS = {
    "window-last256": dict(window=(255, 0)),
    "window-left7-right3-full": dict(window=(7, 3), causal=False),
    "softcap30": dict(softcap=30.0),
    "softcap-window": dict(softcap=5.0, window=(1000, 0)),
    "noncausal": dict(causal=False),
    "scale": dict(scale=0.05),
}


@pytest.mark.parametrize("block_size", [None, 64], ids=["contig", "bs64"])
@pytest.mark.parametrize("opts", OPTIONS.values(), ids=OPTIONS.keys())
def test_options(opts, block_size):
    case = make_case(lengths=LENGTHS, n=4, hq=16, hk=4, d=64, block_size=block_size,
                     dtype=torch.bfloat16, device="cuda", seed=5)
    case["q"] = case["q"] * 3  # sharper scores, so softcap and windows matter
    out, lse = attnkit.decode_attention(**case, return_lse=True, backend="triton", **opts)
    ref_out, ref_lse = truth(case, **opts)
    base_out, base_lse = truth(case, dtype=torch.bfloat16, **opts)
    assert_within_rule("out", out.cpu(), ref_out, base_out, dtype=torch.bfloat16)
    assert_within_rule("lse", lse.cpu(), ref_lse, base_lse, dtype=torch.bfloat16)


@pytest.mark.parametrize("d,dv", [(64, 64), (80, 80), (96, 64), (256, 256)])
def test_head_dims(d, dv):
    case = make_case(lengths=[700, 3, 129], n=2, hq=8, hk=2, d=d, dv=dv, block_size=16,
                     dtype=torch.float16, device="cuda", seed=d)
    out = attnkit.decode_attention(**case, backend="triton")
    assert_within_rule("out", out.cpu(), truth(case)[0], truth(case, dtype=torch.float16)[0],
                       dtype=torch.float16)


def test_auto_picks_triton_and_big_batch_single_split():
    case = make_case(lengths=[2048] * 64, n=1, hq=32, hk=8, d=128, block_size=64,
                     dtype=torch.bfloat16, device="cuda", seed=1)
    from attnkit.ops import decode as decode_op
    call = decode_op.validate(**case, causal=True, window=(-1, -1), softcap=0.0, scale=None,
                              return_lse=False, backend="auto")
    assert decode_op.select_backend(call, "auto").name == "triton"
    out = attnkit.decode_attention(**case)
    small = {k: (v[:4] if k in ("q", "cache_seqlens", "block_table") else v)
             for k, v in case.items()}
    assert_within_rule("out", out[:4].cpu(), truth(small)[0],
                       truth(small, dtype=torch.bfloat16)[0], dtype=torch.bfloat16)


@pytest.mark.parametrize("paged", [False, True], ids=["contig", "paged64"])
@pytest.mark.parametrize("n", [1, 2])
def test_mla_decode(paged, n):
    g = torch.Generator(device="cuda").manual_seed(n)
    b, h, r, p = 4, 128, 512, 64
    lengths = torch.tensor([1, 5000, 777, 64], dtype=torch.int32, device="cuda")
    dt = torch.bfloat16
    ql = torch.randn(b, n, h, r, device="cuda", dtype=dt, generator=g)
    qr = torch.randn(b, n, h, p, device="cuda", dtype=dt, generator=g)
    if paged:
        cache = torch.randn(4 * 80, 64, r + p, device="cuda", dtype=dt, generator=g)
        table = torch.randperm(4 * 80, device="cuda", generator=g).view(4, 80).int()
    else:
        cache = torch.randn(b, 5000, r + p, device="cuda", dtype=dt, generator=g)
        table = None
    lat, rope = cache[..., :r], cache[..., r:]
    scale = 192 ** -0.5
    out, lse = attnkit.mla_decode_attention(ql, qr, lat, rope, cache_seqlens=lengths,
                                            block_table=table, scale=scale, return_lse=True,
                                            backend="triton")
    case = dict(q=torch.cat([ql, qr], -1), k_cache=cache.unsqueeze(2),
                v_cache=lat.unsqueeze(2), cache_seqlens=lengths, block_table=table)
    ref_out, ref_lse = truth(case, scale=scale)
    base_out, base_lse = truth(case, scale=scale, dtype=dt)
    assert_within_rule("out", out.cpu(), ref_out, base_out, dtype=dt)
    assert_within_rule("lse", lse.cpu(), ref_lse, base_lse, dtype=dt)


@pytest.mark.parametrize("style", ["half", "interleaved"])
@pytest.mark.parametrize("paged", [False, True], ids=["static", "paged16"])
def test_fused_rope_write(style, paged):
    from attnkit.cache import PagedKVCache, StaticKVCache
    from attnkit.nn import RotaryEmbedding
    from attnkit.ops import write_rotated
    from attnkit.ops.rope import apply_rope
    dt, dev = torch.bfloat16, "cuda"
    if paged:
        cache = PagedKVCache(num_layers=1, num_blocks=64, block_size=16, kv_heads=8,
                             head_dim=128, dtype=dt, device=dev)
        ids = [cache.add_sequence() for _ in range(4)]
        for i, n in zip(ids, (100, 1, 37, 64)):
            cache.begin_step(n, [i])
        cache.begin_step(3, ids)
    else:
        cache = StaticKVCache(num_layers=1, batch=4, max_seq=256, kv_heads=8, head_dim=128,
                              dtype=dt, device=dev)
        cache.begin_step(50)
        cache.begin_step(3)
    rope = RotaryEmbedding(128, theta=500000.0, style=style).to(dev)
    cos, sin = rope(cache.step_positions)
    k = torch.randn(4, 3, 8, 128, device=dev, dtype=dt)
    v = torch.randn(4, 3, 8, 128, device=dev, dtype=dt)
    write_rotated(cache, 0, k, v, cos, sin, style=style, backend="triton")
    slots = cache.step_slots()
    got = cache.k[0][slots].view(4, 3, 8, 128).cpu()
    tables = (cos[:, :, None].cpu().double(), sin[:, :, None].cpu().double())
    truth = apply_rope(k.cpu().double(), *tables, style=style)
    base = apply_rope(k.cpu(), cos[:, :, None].cpu(), sin[:, :, None].cpu(), style=style)
    assert_within_rule("k", got, truth, base, dtype=dt)
    assert torch.equal(cache.v[0][slots].view(4, 3, 8, 128), v)


@pytest.mark.parametrize("variant", ["gqa", "window", "mla"])
def test_model_decoding_on_gpu_equals_full_forward(variant):
    import copy

    from attnkit.models import Decoder, DecoderConfig
    extra = {"gqa": dict(num_kv_heads=2), "window": dict(num_kv_heads=2, window=24),
             "mla": dict(attention="mla", kv_lora_rank=64, qk_nope_head_dim=32,
                         qk_rope_head_dim=16, v_head_dim=32)}[variant]
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(vocab_size=97, hidden_size=256, num_layers=2, num_heads=8,
                                  **extra)).cuda().eval()
    tokens = torch.randint(0, 97, (3, 40), device="cuda")
    kind = "latent" if variant == "mla" else "paged"
    with torch.no_grad():
        truth = copy.deepcopy(model).double()(tokens).cpu()
        bf = copy.deepcopy(model).bfloat16()
        baseline = bf(tokens).float().cpu()
        cache = bf.make_cache(kind=kind, batch=3, max_seq=40, block_size=16)
        step = {"seq_ids": [cache.add_sequence() for _ in range(3)]} if kind == "paged" else {}
        parts = [bf(tokens[:, :30], cache=cache, **step)]
        parts += [bf(tokens[:, t:t + 1], cache=cache, **step) for t in range(30, 40)]
    got = torch.cat(parts, 1).float().cpu()
    assert_within_rule("logits", got, truth, baseline, dtype=torch.bfloat16)
