"""The sparse ops and layers on a CUDA device: the same numbers as on the CPU.

The reference backend runs wherever PyTorch does; these tests catch device placement mistakes
(index tensors, masks, offsets built on the wrong device) and check that the layers' bf16 path,
whose window branch goes through ``attnkit.attention``'s Triton kernel on CUDA, trains.
Run with ``pytest -m gpu`` on a CUDA machine.
"""

from __future__ import annotations

import pytest
import torch

from attnkit.nn import NativeSparseAttention, RotaryEmbedding, SparseRoutedAttention
from attnkit.ops import sparse
from tests.tolerance import assert_exact64

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

F64 = torch.float64
CU = [0, 37, 37, 100, 213]


def _both(*shapes):
    cpu = [torch.randn(*s, dtype=F64) for s in shapes]
    return cpu, [t.cuda() for t in cpu]


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_ops_on_cuda_equal_cpu(packed):
    torch.manual_seed(0)
    if packed:
        lead, cu = (CU[-1],), torch.tensor(CU, dtype=torch.int32)
    else:
        lead, cu = (2, 213), None
    (q, k, v), (qg, kg, vg) = _both((*lead, 16, 32), (*lead, 4, 32), (*lead, 4, 32))
    win = sparse.compression_windows(k, block=16, stride=8, cu_seqlens=cu)
    kc = win.mean(dim=-2)
    kcg = sparse.compression_windows(kg, block=16, stride=8,
                                     cu_seqlens=None if cu is None else cu.cuda()).mean(dim=-2)
    cug = None if cu is None else cu.cuda()
    assert_exact64("k_cmp", kcg.cpu(), kc)
    opts = dict(compress_block=16, compress_stride=8, select_block=16, num_selected=5)
    idx = sparse.select_blocks(q, kc, cu_seqlens=cu, **opts)
    idxg = sparse.select_blocks(qg, kcg, cu_seqlens=cug, **opts)
    assert torch.equal(idxg.cpu(), idx)
    pairs = [
        (sparse.compressed_attention(q, kc, kc, block=16, stride=8, cu_seqlens=cu),
         sparse.compressed_attention(qg, kcg, kcg, block=16, stride=8, cu_seqlens=cug)),
        (sparse.selected_attention(q, k, v, idx, block=16, cu_seqlens=cu),
         sparse.selected_attention(qg, kg, vg, idxg, block=16, cu_seqlens=cug)),
        (sparse.topk_token_attention(q, k, v, top_tokens=9, cu_seqlens=cu),
         sparse.topk_token_attention(qg, kg, vg, top_tokens=9, cu_seqlens=cug)),
        (sparse.routed_attention(q, k, v, segment_size=12, top_k=3, cu_seqlens=cu),
         sparse.routed_attention(qg, kg, vg, segment_size=12, top_k=3, cu_seqlens=cug)),
    ]
    for n, (cpu, gpu) in enumerate(pairs):
        assert gpu.is_cuda
        assert_exact64(f"op {n}", gpu.cpu(), cpu)


def _make(kind, rope):
    torch.manual_seed(1)
    if kind == "nsa":
        return NativeSparseAttention(hidden_size=256, num_heads=8, num_kv_heads=2, head_dim=32,
                                     compress_block=16, compress_stride=8, select_block=32,
                                     select_blocks=4, window=64, rope=rope)
    return SparseRoutedAttention(hidden_size=256, num_heads=8, num_kv_heads=2, head_dim=32,
                                 segment_size=32, top_k=3, rope=rope)


@pytest.mark.parametrize("layer_kind", ["nsa", "routed"])
def test_layers_on_cuda(layer_kind):
    # float64 parity without RoPE: RoPE's tables are float32 by contract, and float32 sin/cos
    # differ between devices in the last bits
    layer = _make(layer_kind, None).to(F64)
    x = torch.randn(2, 300, 256, dtype=F64)
    want = layer(x)
    assert_exact64("float64", layer.cuda()(x.cuda()).cpu(), want)
    # bf16 training step with RoPE: finite outputs and gradients everywhere
    gpu = _make(layer_kind, RotaryEmbedding(32)).cuda().to(torch.bfloat16)
    xb = x.cuda().to(torch.bfloat16).requires_grad_(True)
    out = gpu(xb)
    out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert torch.isfinite(xb.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters())
