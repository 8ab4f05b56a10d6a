"""The decode benchmark suites: registered, bytes counted as PEERS.md does, check on tiny shapes."""

from __future__ import annotations

import dataclasses

import torch

from attnkit.bench import registry
from attnkit.bench.registry import Settings


def test_suites_are_registered_with_bandwidth_units():
    for name in ("decode", "mla-decode"):
        suite = registry.get(name)
        assert suite.unit == "TB/s" and suite.directions == ("fwd",)
        assert suite.subject.name == "attnkit"
    names = [c.name for c in registry.get("decode").cases(True)]
    assert names == ["paged64 ctx2k gqa32:8", "paged64 ctx8k gqa32:8", "paged64 ctx32k gqa32:8"]


def test_bytes_are_the_valid_k_and_v_entries():
    suite = registry.get("decode")
    case = suite.cases(True)[0]  # batch 64, ctx 2048, 8 kv heads, d 128, bf16
    assert suite.work(case, "fwd").bytes == 2 * 64 * 2048 * 8 * 128 * 2
    mla = registry.get("mla-decode").cases(True)[0]  # latent 512 + rope 64, ctx 4096
    assert registry.get("mla-decode").work(mla, "fwd").bytes == 64 * 4096 * 576 * 2


def test_check_passes_on_a_tiny_paged_and_latent_case():
    settings = Settings(device=torch.device("cpu"), backend="reference")
    for name, shrink in (("decode", dict(heads_q=4, heads_kv=2, head_dim=16)),
                         ("mla-decode", dict(heads_q=4, latent=32, rope=16, head_dim=48))):
        suite = registry.get(name)
        case = dataclasses.replace(suite.cases(True)[0], batch=3, context=40, block_size=16,
                                   **shrink)
        inputs = suite.make_inputs(case, settings.device, 0)
        forward = suite.subject.build(case, inputs, settings)
        result = suite.check(case, inputs, forward, settings)
        assert result.ok, result.errors
