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
