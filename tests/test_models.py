"""The decoder model: incremental decoding with each cache equals the full forward (tolerance
rule), generation, and the layers' cache path."""

from __future__ import annotations

import copy

import pytest
import torch

from attnkit.cache import CacheOverflowError
from attnkit.models import Decoder, DecoderConfig, generate
from attnkit.nn import GroupedQueryAttention, RotaryEmbedding
from tests.tolerance import assert_within_rule

BASE = dict(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4)
VARIANTS = {
    "mha": dict(num_kv_heads=4),
    "gqa": dict(num_kv_heads=2),
    "mqa-window": dict(num_kv_heads=1, window=5),
    "mla": dict(attention="mla", kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
                v_head_dim=8),
}


def _model(variant, seed=0):
    torch.manual_seed(seed)
    return Decoder(DecoderConfig(**BASE, **VARIANTS[variant])).eval()


def _tokens(b, s, seed=1):
    return torch.randint(0, BASE["vocab_size"], (b, s), generator=torch.Generator().manual_seed(seed))


def _check_against_full(model, tokens, logits):
    with torch.no_grad():
        truth = copy.deepcopy(model).double()(tokens)
        baseline = model(tokens)
    assert_within_rule("logits", logits, truth, baseline, dtype=torch.float32)


def _kinds(variant):
    return ["latent", "paged"] if variant == "mla" else ["static", "paged"]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANTS.keys())
def test_token_by_token_decoding_equals_full_forward(variant):
    model = _model(variant)
    tokens = _tokens(2, 11)
    for kind in _kinds(variant):
        cache = model.make_cache(kind=kind, batch=2, max_seq=16, block_size=4)
        if kind == "paged":
            ids = [cache.add_sequence() for _ in range(2)]
        steps = []
        with torch.no_grad():
            for t in range(tokens.shape[1]):
                extra = {"seq_ids": ids} if kind == "paged" else {}
                steps.append(model(tokens[:, t:t + 1], cache=cache, **extra))
        _check_against_full(model, tokens, torch.cat(steps, dim=1))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANTS.keys())
def test_prefill_then_speculative_chunks_equal_full_forward(variant):
    model = _model(variant, seed=2)
    tokens = _tokens(2, 12, seed=3)
    kind = _kinds(variant)[-1]
    cache = model.make_cache(kind=kind, batch=2, max_seq=12, block_size=4)
    if kind == "paged":
        ids = [cache.add_sequence() for _ in range(2)]
    extra = {"seq_ids": ids} if kind == "paged" else {}
    with torch.no_grad():
        parts = [model(tokens[:, a:b], cache=cache, **extra) for a, b in ((0, 6), (6, 9),
                                                                         (9, 10), (10, 12))]
    _check_against_full(model, tokens, torch.cat(parts, dim=1))
    if variant == "mqa-window":  # pages out of the window were released: room remains
        with torch.no_grad():
            model(tokens[:, :1], cache=cache, **extra)
        assert cache.free_blocks > 0
    else:
        with pytest.raises(CacheOverflowError):
            model(tokens[:, :1], cache=cache, **extra)


def test_paged_fork_and_free_leave_other_sequences_unchanged():
    model = _model("gqa", seed=4)
    tokens = _tokens(3, 9, seed=5)
    with torch.no_grad():
        alone = model.make_cache(kind="paged", batch=3, max_seq=16, block_size=4)
        busy = model.make_cache(kind="paged", batch=4, max_seq=16, block_size=4)
        ids_alone = [alone.add_sequence() for _ in range(2)]
        ids_busy = [busy.add_sequence() for _ in range(3)]
        model(tokens[:2, :6], cache=alone, seq_ids=ids_alone)
        model(tokens[:, :6], cache=busy, seq_ids=ids_busy)
        fork = busy.fork(ids_busy[0])
        model(tokens[2:, 6:8], cache=busy, seq_ids=[fork])  # the fork diverges
        busy.free(ids_busy[2])
        for t in range(6, 9):
            want = model(tokens[:2, t:t + 1], cache=alone, seq_ids=ids_alone)
            got = model(tokens[:2, t:t + 1], cache=busy, seq_ids=ids_busy[:2])
            assert torch.equal(got, want)
        busy.free(fork)


def test_generate_greedy_matches_full_forward_argmax_and_ragged_prompts():
    model = _model("gqa", seed=6)
    prompts = [[3, 1, 4, 1, 5], [9, 2]]
    out = generate(model, prompts, max_new_tokens=5)
    for prompt, seq in zip(prompts, out):
        assert seq[:len(prompt)] == prompt and len(seq) == len(prompt) + 5
        with torch.no_grad():
            for t in range(len(prompt), len(seq)):
                logits = model(torch.tensor([seq[:t]]))[0, -1]
                assert seq[t] == int(logits.argmax())
    assert generate(model, prompts, max_new_tokens=5, cache="static") == out


@pytest.mark.parametrize("variant", ["mqa-window", "mla"])
def test_generate_sampling_is_reproducible(variant):
    model = _model(variant, seed=7)
    runs = [generate(model, [[1, 2, 3]], max_new_tokens=6, temperature=0.8, top_k=10,
                     generator=torch.Generator().manual_seed(11)) for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0][0]) == 9


def test_generate_and_model_errors():
    model = _model("gqa")
    with pytest.raises(ValueError, match="prompts must hold at least one prompt"):
        generate(model, [[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        generate(model, [[1]], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature must be >= 0.0"):
        generate(model, [[1]], max_new_tokens=1, temperature=-1.0)
    with pytest.raises(ValueError, match="kind='latent' is the MLA cache"):
        model.make_cache(kind="latent")
    with pytest.raises(ValueError, match="cache must be one of 'paged', 'static', got 'ring'"):
        generate(model, [[1]], max_new_tokens=1, cache="ring")
    with pytest.raises(ValueError, match="DecoderConfig.window applies to gqa attention"):
        DecoderConfig(**BASE, attention="mla", window=4)
    with pytest.raises(TypeError, match="tokens must be an int tensor"):
        model(torch.zeros(1, 3))


def test_gqa_layer_without_layer_idx_refuses_a_cache():
    layer = GroupedQueryAttention(hidden_size=16, num_heads=2, rope=RotaryEmbedding(8))
    model = _model("mha")
    cache = model.make_cache(kind="static", batch=1, max_seq=4)
    cache.begin_step(1)
    with pytest.raises(ValueError, match="cache was given but the layer has no layer_idx"):
        layer(torch.randn(1, 1, 16), cache=cache)


def test_a_windowed_cache_refuses_a_layer_that_sees_further():
    from attnkit.cache import PagedKVCache
    layer = GroupedQueryAttention(hidden_size=16, num_heads=2, window=8, rope=RotaryEmbedding(8),
                                  layer_idx=0)
    cache = PagedKVCache(num_layers=1, num_blocks=4, block_size=4, kv_heads=2, head_dim=8,
                         window=4)
    cache.begin_step(1, [cache.add_sequence()])
    with pytest.raises(ValueError, match=r"the cache keeps only the last 4 tokens of each "
                                         r"sequence, but this layer sees window=\(7, 0\)"):
        layer(torch.randn(1, 1, 16), cache=cache)
