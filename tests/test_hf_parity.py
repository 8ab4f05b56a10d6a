"""attnkit layers against Hugging Face's attention modules, weights loaded with ``strict=True``.

Each case builds a tiny random Hugging Face attention (eager path, its own rotary embedding and a
4-D mask spelling out causality, window, padding and packed documents), builds the attnkit layer
with ``attention_from_hf_config``, loads the state_dict strictly and compares outputs:

- float32 / bfloat16: attnkit's error against the float64 Hugging Face run is at most twice the
  Hugging Face module's own error in that dtype, plus the floor (tests/tolerance.py).

(Both sides build RoPE tables in float32, with cos/sin that may differ by an ulp between code
paths, so a float64 run agrees only to ~1e-7; the frequencies themselves are checked to 1 ulp.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    DeepseekV3Config,
    Gemma2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_deepseek
from transformers.models.gemma2 import modeling_gemma2 as hf_gemma2
from transformers.models.llama import modeling_llama as hf_llama
from transformers.models.mistral import modeling_mistral as hf_mistral
from transformers.models.qwen2 import modeling_qwen2 as hf_qwen2
from transformers.models.qwen3 import modeling_qwen3 as hf_qwen3

from attnkit.integrations.transformers import attention_from_hf_config
from attnkit.nn import GroupedQueryAttention, MultiHeadLatentAttention
from tests.tolerance import assert_within_rule, max_error

HIDDEN, BATCH, SEQ = 64, 2, 13

HF_CLASSES = {
    "llama": (hf_llama.LlamaAttention, hf_llama.LlamaRotaryEmbedding),
    "mistral": (hf_mistral.MistralAttention, hf_mistral.MistralRotaryEmbedding),
    "qwen2": (hf_qwen2.Qwen2Attention, hf_qwen2.Qwen2RotaryEmbedding),
    "qwen3": (hf_qwen3.Qwen3Attention, hf_qwen3.Qwen3RotaryEmbedding),
    "gemma2": (hf_gemma2.Gemma2Attention, hf_gemma2.Gemma2RotaryEmbedding),
    "deepseek_v3": (hf_deepseek.DeepseekV3Attention, hf_deepseek.DeepseekV3RotaryEmbedding),
}


def _config(kind: str, **overrides):
    common = dict(hidden_size=HIDDEN, num_attention_heads=8, num_key_value_heads=2,
                  num_hidden_layers=2, intermediate_size=128, vocab_size=97,
                  max_position_embeddings=256)
    if kind == "llama":  # GQA 8/2, Llama 3 RoPE scaling over a short original context
        cfg = LlamaConfig(**common, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16})
    elif kind == "mistral":
        cfg = MistralConfig(**common, sliding_window=5)
    elif kind == "qwen2":
        cfg = Qwen2Config(**common)
    elif kind == "qwen3":
        cfg = Qwen3Config(**common, head_dim=8, rms_norm_eps=1e-6)
    elif kind == "gemma2":  # head_dim override (4 x 32 != 64), window, softcap, scalar
        common.update(num_attention_heads=4, num_key_value_heads=2)
        cfg = Gemma2Config(**common, head_dim=32, sliding_window=4, query_pre_attn_scalar=24,
                           attn_logit_softcapping=3.0)
    else:
        common.update(num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
        cfg = DeepseekV3Config(**common, kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=12,
                               qk_rope_head_dim=8, v_head_dim=10, rope_parameters={
                                   "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                   "original_max_position_embeddings": 32, "beta_fast": 32,
                                   "beta_slow": 1, "mscale": 0.8, "mscale_all_dim": 0.7})
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg._attn_implementation = "eager"
    return cfg


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, norms included (they start at ones)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            scale = 1 / p.shape[-1] ** 0.5 if p.ndim == 2 else 0.5
            base = 1.0 if p.ndim == 1 and torch.all(p == 1) else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=gen))


def _visibility(batch: int, seq: int, *, window: int | None, padding: torch.Tensor | None,
                docs: list[int] | None) -> torch.Tensor:
    """Bool ``[b, 1, s, s]``: causal, within the window, key not padded, same document."""
    i = torch.arange(seq).view(seq, 1)
    j = torch.arange(seq).view(1, seq)
    ok = (j <= i).expand(batch, 1, seq, seq).clone()
    if window is not None:
        ok &= i - j < window
    if padding is not None:
        ok &= padding[:, None, None, :]
    if docs is not None:
        doc = torch.repeat_interleave(torch.arange(len(docs)), torch.tensor(docs))
        ok &= doc.view(seq, 1) == doc.view(1, seq)
    return ok


def _run_hf(module, rotary, x, position_ids, visible):
    cos, sin = rotary(x, position_ids)
    mask = torch.zeros(visible.shape, dtype=x.dtype).masked_fill(~visible, torch.finfo(x.dtype).min)
    out, _ = module(x, position_embeddings=(cos, sin), attention_mask=mask)
    return out


def _compare(kind: str, dtype: torch.dtype, *, seed: int, padding: bool = False,
             docs: list[int] | None = None, offset: int = 0, **overrides) -> None:
    cfg = _config(kind, **overrides)
    attn_cls, rotary_cls = HF_CLASSES[kind]
    torch.manual_seed(seed)
    hf = attn_cls(cfg, layer_idx=0).eval()
    _randomise(hf, seed)
    hf_rotary = rotary_cls(cfg)
    ours = attention_from_hf_config(cfg, layer_idx=0).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)

    batch = 1 if docs else BATCH
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, SEQ, HIDDEN, generator=gen, dtype=torch.float64)
    keep = None
    if padding:  # right padding: sequence 1 keeps its first 8 tokens
        keep = torch.ones(batch, SEQ, dtype=torch.bool)
        keep[1, 8:] = False
    if docs:
        position_ids = torch.cat([torch.arange(n) for n in docs])[None]  # restart per document
        cu = torch.tensor([0, *torch.tensor(docs).cumsum(0).tolist()], dtype=torch.int32)
    else:
        position_ids = (torch.arange(SEQ) + offset).expand(batch, SEQ)
        cu = None
    window = getattr(cfg, "sliding_window", None) if kind in ("mistral", "gemma2") else None
    visible = _visibility(batch, SEQ, window=window, padding=keep, docs=docs)

    def run_ours(layer, dt):
        return layer(x.to(dt), positions=None if docs else position_ids,
                     attention_mask=keep, cu_seqlens=cu)

    with torch.no_grad():
        truth = _run_hf(copy.deepcopy(hf).double(), hf_rotary, x, position_ids, visible)
        base = _run_hf(copy.deepcopy(hf).to(dtype), hf_rotary, x.to(dtype), position_ids,
                       visible)
        got = run_ours(copy.deepcopy(ours).to(dtype), dtype)
    rows = keep if keep is not None else torch.ones(batch, SEQ, dtype=torch.bool)
    hf_freq, our_freq = hf_rotary.inv_freq.float(), ours.rope.inv_freq
    torch.testing.assert_close(our_freq, hf_freq, rtol=2.4e-7, atol=0)  # within 1 fp32 ulp
    assert_within_rule(f"{kind} {dtype}", got[rows], truth[rows], base[rows], dtype=dtype)
    assert max_error(got[rows], truth[rows]) > 0  # the comparison is not vacuous


DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


@pytest.mark.parametrize("dtype", DTYPES)
def test_llama_gqa_llama3_scaling_with_padding(dtype):
    _compare("llama", dtype, seed=1, padding=True, offset=40)


@pytest.mark.parametrize("dtype", DTYPES)
def test_llama_packed_documents(dtype):
    _compare("llama", dtype, seed=2, docs=[5, 1, 7])


@pytest.mark.parametrize("dtype", DTYPES)
def test_qwen2_qkv_bias_with_padding(dtype):
    _compare("qwen2", dtype, seed=3, padding=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_qwen3_qk_norm(dtype):
    _compare("qwen3", dtype, seed=4, padding=True, offset=3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_qwen3_qk_norm_packed_documents(dtype):
    _compare("qwen3", dtype, seed=5, docs=[4, 9])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mistral_sliding_window(dtype):
    _compare("mistral", dtype, seed=6, padding=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemma2_head_dim_override_window_softcap(dtype):
    _compare("gemma2", dtype, seed=7, padding=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleave", [True, False], ids=["interleaved", "half"])
def test_deepseek_v3_mla_with_q_lora(dtype, interleave):
    _compare("deepseek_v3", dtype, seed=8, padding=True, offset=50, rope_interleave=interleave)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deepseek_v3_mla_without_q_lora(dtype):
    _compare("deepseek_v3", dtype, seed=9, padding=True, q_lora_rank=None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deepseek_v3_mla_packed_documents(dtype):
    _compare("deepseek_v3", dtype, seed=10, docs=[6, 7])


def test_built_layers_have_the_expected_structure():
    gemma = attention_from_hf_config(_config("gemma2"), layer_idx=0)
    assert isinstance(gemma, GroupedQueryAttention)
    assert (gemma.head_dim, gemma.window, gemma.softcap) == (32, (3, 0), 3.0)
    assert attention_from_hf_config(_config("gemma2"), layer_idx=1).window == (-1, -1)
    mla = attention_from_hf_config(_config("deepseek_v3", q_lora_rank=None))
    assert isinstance(mla, MultiHeadLatentAttention) and mla.q_proj is not None
    assert mla.q_a_proj is None


def test_unsupported_model_type_is_rejected():
    cfg = _config("llama")
    cfg.model_type = "gpt2"
    with pytest.raises(ValueError, match="model_type must be one of .* got 'gpt2'"):
        attention_from_hf_config(cfg)


def test_rotary_from_config_partial_and_legacy_fields():
    from types import SimpleNamespace

    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from attnkit.integrations.transformers import rotary_from_hf_config

    cfg = _config("llama")
    cfg.rope_parameters = {"rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0,
                           "partial_rotary_factor": 0.5}
    rope = rotary_from_hf_config(cfg)
    hf_freq, _ = ROPE_INIT_FUNCTIONS["linear"](cfg)
    assert (rope.head_dim, rope.rotary_dim) == (8, 4)
    torch.testing.assert_close(rope.inv_freq, hf_freq.float(), rtol=2.4e-7, atol=0)
    legacy = SimpleNamespace(hidden_size=64, num_attention_heads=4, rope_theta=500.0,
                             rope_scaling={"type": "linear", "factor": 4.0},
                             max_position_embeddings=64)
    old = rotary_from_hf_config(legacy)
    assert (old.head_dim, old.theta, old.scaling.factor, old.style) == (16, 500.0, 4.0, "half")
