"""``torch.compile(fullgraph=True)`` over attnkit's layers: no graph break, same results.

On the CPU the layers run attnkit's reference path; ``tests/gpu/test_flash_gpu.py`` compiles
the same models on a GPU, where the attention is the Triton kernels' custom op.
"""

from __future__ import annotations

import pytest
import torch

from attnkit.models import Decoder, DecoderConfig


@pytest.mark.parametrize("attention", ["gqa", "mla"])
def test_decoder_compiles_fullgraph_and_matches_eager(attention):
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=64, hidden_size=64, num_layers=2, num_heads=4,
                           num_kv_heads=2, attention=attention)
    model = Decoder(config)
    tokens = torch.randint(0, 64, (2, 13))
    eager = model(tokens)  # [2, 13, 64]
    eager.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    # aot_eager: dynamo and AOT autograd trace the whole model (a graph break raises under
    # fullgraph) without inductor's code generation, which CI does not need to pay for.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(tokens)
    got.square().mean().backward()
    torch.testing.assert_close(got, eager)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], msg=name)


def test_packed_attention_compiles_fullgraph_through_the_kernels():
    """Packed batches under torch.compile: no host read of cu_seqlens (the kernels take the
    packed total as the longest segment when max_seqlen is not given)."""
    pytest.importorskip("triton")
    import attnkit
    if not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def block(q, k, v, cu):
        return attnkit.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, causal=True,
                                 backend="triton") * 2

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(23, 2, 16, generator=g).to(device).requires_grad_() for _ in range(3))
    cu = torch.tensor([0, 7, 7, 23], dtype=torch.int32, device=device)  # an empty segment
    got = torch.compile(block, fullgraph=True, backend="aot_eager")(q, k, v, cu)
    got.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    want = block(q, k, v, cu)
    want.square().sum().backward()
    torch.testing.assert_close(got, want)
    for g_got, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(g_got, t.grad)
