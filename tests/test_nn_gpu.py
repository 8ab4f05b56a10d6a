"""attnkit layers on a GPU through the Triton kernels: outputs and every gradient vs the oracle.

The layers call ``attnkit.attention``; here it is pinned to ``backend="triton"`` so the kernels
(not the reference) serve every call. Truth: the float64 functional oracle on the CPU; baseline:
the same oracle in bfloat16 on the GPU (PyTorch's own bf16 math). Run with
``pytest -m gpu tests/test_nn_gpu.py`` on a CUDA machine.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import attnkit.nn.gqa as gqa_module
import attnkit.nn.mla as mla_module
from attnkit.nn import GroupedQueryAttention, MultiHeadLatentAttention, RotaryEmbedding
from attnkit.ops.attention import attention
from tests import test_nn_gqa, test_nn_mla
from tests.tolerance import assert_within_rule

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BF16 = torch.bfloat16


@pytest.fixture(autouse=True)
def triton_only(monkeypatch):
    """Every attention call of the layers goes to the Triton kernels (raises if unsupported)."""
    pinned = functools.partial(attention, backend="triton")
    monkeypatch.setattr(gqa_module, "attention", pinned)
    monkeypatch.setattr(mla_module, "attention", pinned)


def _grads(out, weight, inputs):
    return torch.autograd.grad((out * weight.to(out.dtype)).sum(), inputs)


def _check(layer, oracle, x, **kw):
    """Layer (bf16, CUDA, Triton) vs oracle (fp64 truth, bf16 baseline; both on the CPU)."""
    weight = torch.randn(x.shape[0], x.shape[1], layer.hidden_size,
                         generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    runs = {}
    for key, device, dtype in (("truth", "cpu", torch.float64), ("base", "cpu", BF16),
                               ("got", "cuda", BF16)):
        model = copy.deepcopy(layer).to(device, dtype)
        args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        xs = x.to(device, dtype).requires_grad_(True)
        if key == "got":
            out = model(xs, attention_mask=args.get("keep"), cu_seqlens=args.get("cu"),
                        positions=args.get("positions"))
        else:
            out = oracle(model, xs, dtype=dtype, **args)
        params = dict(model.named_parameters())
        grads = _grads(out, weight.to(device), [*params.values(), xs])
        runs[key] = [out.detach().cpu(), *(g.cpu() for g in grads)]
    names = ["output", *(f"grad {n}" for n in dict(layer.named_parameters())), "grad x"]
    for name, got, base, truth in zip(names, runs["got"], runs["base"], runs["truth"]):
        assert_within_rule(name, got, truth, base, dtype=BF16)


def _gqa_oracle(layer, x, *, dtype, keep=None, cu=None, positions=None):
    return test_nn_gqa._oracle(layer, x, dtype=dtype, keep=keep, cu=cu, positions=positions)


def _gqa(**kw):
    torch.manual_seed(0)
    layer = GroupedQueryAttention(hidden_size=256, num_heads=4, **kw)
    test_nn_gqa._randomise(layer, 0)
    return layer


def _x(b, s, width=256, seed=1):
    return torch.randn(b, s, width, generator=torch.Generator().manual_seed(seed))


def _padding(b, s):
    keep = torch.ones(b, s, dtype=torch.bool)
    keep[-1, s - 9:] = False
    return keep


def test_gqa_causal_rope_qk_norm_padding():
    layer = _gqa(num_kv_heads=2, rope=RotaryEmbedding(64), qk_norm_eps=1e-6, qkv_bias=True)
    _check(layer, _gqa_oracle, _x(2, 113), keep=_padding(2, 113))


def test_gqa_encoder_and_local_window():
    _check(_gqa(num_kv_heads=1, causal=False), _gqa_oracle, _x(2, 77), keep=_padding(2, 77))
    _check(_gqa(num_kv_heads=4, window=17, softcap=5.0, rope=RotaryEmbedding(64)), _gqa_oracle,
           _x(2, 129))


def test_gqa_packed_documents():
    cu = torch.tensor([0, 40, 40, 113, 150], dtype=torch.int32)
    _check(_gqa(num_kv_heads=2, rope=RotaryEmbedding(64)), _gqa_oracle, _x(1, 150), cu=cu)


def test_mla_low_rank_queries():
    torch.manual_seed(0)
    layer = MultiHeadLatentAttention(hidden_size=256, num_heads=4, q_lora_rank=64,
                                     kv_lora_rank=32, qk_nope_head_dim=48, qk_rope_head_dim=16,
                                     v_head_dim=32, rope=RotaryEmbedding(16, style="interleaved"))
    test_nn_gqa._randomise(layer, 0)
    _check(layer, test_nn_mla._oracle, _x(2, 97), keep=_padding(2, 97))


def test_cross_attention_on_gpu():
    layer = _gqa(num_kv_heads=2, causal=False, kv_hidden_size=128)
    x, ctx = _x(2, 33), _x(2, 70, width=128, seed=2)
    truth = test_nn_gqa._oracle(copy.deepcopy(layer).double(), x.double(), dtype=torch.float64,
                                context=ctx.double())
    base = test_nn_gqa._oracle(copy.deepcopy(layer).to(BF16), x.to(BF16), dtype=BF16,
                               context=ctx.to(BF16))
    cuda = copy.deepcopy(layer).to("cuda", BF16)
    with torch.no_grad():
        got = cuda(x.to("cuda", BF16), context=ctx.to("cuda", BF16))
    assert_within_rule("cross", got.cpu(), truth, base.detach(), dtype=BF16)


def test_llama_model_on_gpu_matches_sdpa():
    from transformers import LlamaConfig, LlamaForCausalLM

    from attnkit.integrations.transformers import register

    register()
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    truth_model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    state = truth_model.state_dict()
    ids = torch.randint(1, 512, (2, 150), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 150, dtype=torch.long)
    mask[1, 120:] = 0
    with torch.no_grad():
        truth = truth_model.double()(input_ids=ids, attention_mask=mask).logits
        outs = {}
        for name in ("sdpa", "attnkit"):
            model = LlamaForCausalLM._from_config(cfg, attn_implementation=name).eval()
            model.load_state_dict(state)
            model = model.to("cuda", BF16)
            outs[name] = model(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits.cpu()
    valid = mask.bool()
    assert_within_rule("llama logits", outs["attnkit"][valid], truth[valid], outs["sdpa"][valid],
                       dtype=BF16)
