"""RoPE scaling configs: frequencies against each published formula, HF mapping, validation.

The expected frequencies are written here independently, element by element in float64 with
the ``math`` module, from the papers / Hugging Face's documented formulas.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.ops.rope_scaling import (
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    YarnScaling,
    rope_inv_freq,
    scaling_from_hf,
)

DIMS = (8, 64, 80, 128)


def plain(dim: int, theta: float) -> list[float]:
    return [1.0 / theta ** (2 * i / dim) for i in range(dim // 2)]


def close(got: torch.Tensor, expected: list[float]) -> None:
    assert got.dtype == torch.float32
    assert got.shape == (len(expected),)
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=2e-7, atol=0.0)


@pytest.mark.parametrize("dim", DIMS)
def test_default(dim):
    inv_freq, factor = rope_inv_freq(dim, theta=10000.0)
    close(inv_freq, plain(dim, 10000.0))
    assert factor == 1.0


@pytest.mark.parametrize("dim", DIMS)
def test_linear(dim):
    inv_freq, factor = rope_inv_freq(dim, theta=500000.0, scaling=LinearScaling(factor=4))
    close(inv_freq, [f / 4 for f in plain(dim, 500000.0)])
    assert factor == 1.0


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("seq_len", [None, 100, 4096, 5000, 20000])
def test_dynamic_ntk(dim, seq_len):
    cfg = DynamicNTKScaling(factor=2.5, original_max_positions=4096)
    inv_freq, factor = rope_inv_freq(dim, theta=10000.0, scaling=cfg, seq_len=seq_len)
    n = 4096 if seq_len is None or seq_len <= 4096 else seq_len
    base = 10000.0 * ((2.5 * n / 4096) - 1.5) ** (dim / (dim - 2))
    close(inv_freq, plain(dim, base))
    assert factor == 1.0
    if n == 4096:
        close(inv_freq, plain(dim, 10000.0))


def yarn_expected(dim, theta, factor, orig, beta_fast, beta_slow, truncate=True):
    # YaRN (Peng et al. 2023, eq. 17-20): dimension d turns L / (2 pi theta^(2d/D)) times;
    # solve for the dims that turn beta_fast / beta_slow times and ramp between them.
    def dim_for(rotations):
        return dim * math.log(orig / (2 * math.pi * rotations)) / (2 * math.log(theta))

    lo, hi = dim_for(beta_fast), dim_for(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if hi == lo:
        hi += 0.001
    out = []
    for i, f in enumerate(plain(dim, theta)):
        gamma = min(max((i - lo) / (hi - lo), 0.0), 1.0)  # 0: keep, 1: interpolate
        out.append((1 - gamma) * f + gamma * f / factor)
    return out


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("truncate", [True, False])
def test_yarn(dim, truncate):
    cfg = YarnScaling(factor=8.0, original_max_positions=2048, beta_fast=32, beta_slow=1,
                      truncate=truncate)
    inv_freq, factor = rope_inv_freq(dim, theta=10000.0, scaling=cfg)
    close(inv_freq, yarn_expected(dim, 10000.0, 8.0, 2048, 32, 1, truncate))
    assert factor == pytest.approx(0.1 * math.log(8.0) + 1.0, rel=1e-12)


def test_yarn_keeps_fast_and_interpolates_slow():
    cfg = YarnScaling(factor=16.0, original_max_positions=4096)
    inv_freq, _ = rope_inv_freq(128, theta=10000.0, scaling=cfg)
    base = torch.tensor(plain(128, 10000.0), dtype=torch.float32)
    assert torch.equal(inv_freq[:4], base[:4])
    torch.testing.assert_close(inv_freq[-4:], base[-4:] / 16)


def test_yarn_attention_factor_variants():
    def m(s, a):
        return 0.1 * a * math.log(s) + 1.0

    ds = YarnScaling(factor=40.0, original_max_positions=4096, mscale=0.707, mscale_all_dim=1.0)
    assert rope_inv_freq(64, theta=10000.0, scaling=ds)[1] == pytest.approx(
        m(40, 0.707) / m(40, 1.0), rel=1e-12)
    equal = YarnScaling(factor=40.0, original_max_positions=4096, mscale=1.0, mscale_all_dim=1.0)
    assert rope_inv_freq(64, theta=10000.0, scaling=equal)[1] == pytest.approx(1.0)
    given = YarnScaling(factor=4.0, original_max_positions=4096, attention_factor=1.25)
    assert rope_inv_freq(64, theta=10000.0, scaling=given)[1] == 1.25
    unit = YarnScaling(factor=1.0, original_max_positions=4096)
    inv_freq, af = rope_inv_freq(64, theta=10000.0, scaling=unit)
    assert af == 1.0
    close(inv_freq, plain(64, 10000.0))


@pytest.mark.parametrize("dim", DIMS)
def test_llama3(dim):
    cfg = Llama3Scaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_positions=8192)
    inv_freq, factor = rope_inv_freq(dim, theta=500000.0, scaling=cfg)
    expected = []
    for f in plain(dim, 500000.0):
        wavelen = 2 * math.pi / f
        if wavelen < 8192 / 4.0:
            expected.append(f)
        elif wavelen > 8192 / 1.0:
            expected.append(f / 8.0)
        else:
            smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
            expected.append((1 - smooth) * f / 8.0 + smooth * f)
    close(inv_freq, expected)
    assert factor == 1.0


def test_llama3_has_all_three_bands():
    cfg = Llama3Scaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_positions=8192)
    inv_freq, _ = rope_inv_freq(128, theta=500000.0, scaling=cfg)
    base = torch.tensor(plain(128, 500000.0), dtype=torch.float32)
    ratio = base / inv_freq
    assert (ratio == 1).any() and (ratio > 7.99).any() and ((ratio > 1.01) & (ratio < 7.9)).any()


# ------------------------------------------------------------------------------ Hugging Face


def test_scaling_from_hf():
    assert scaling_from_hf(None) is None
    assert scaling_from_hf({"rope_type": "default", "rope_theta": 10000.0}) is None
    assert scaling_from_hf({"type": "linear", "factor": 2.0}) == LinearScaling(2.0)
    assert scaling_from_hf({"type": "dynamic", "factor": 2.0}, max_position_embeddings=2048) == (
        DynamicNTKScaling(2.0, 2048))
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert scaling_from_hf(llama3) == Llama3Scaling(8.0, 1.0, 4.0, 8192)
    qwen = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert scaling_from_hf(qwen, max_position_embeddings=32768) == YarnScaling(4.0, 32768)
    deepseek = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
    assert scaling_from_hf(deepseek) == YarnScaling(40.0, 4096, mscale=1.0, mscale_all_dim=1.0)
    # Hugging Face ignores mscale unless mscale_all_dim is set too
    lone = {"rope_type": "yarn", "factor": 4.0, "mscale": 0.5}
    assert scaling_from_hf(lone, max_position_embeddings=1024) == YarnScaling(4.0, 1024)


def test_scaling_from_hf_errors():
    with pytest.raises(ValueError, match=r"rope_scaling type must be one of 'default', 'linear', "
                                         r"'dynamic', 'yarn', 'llama3', got 'longrope'"):
        scaling_from_hf({"rope_type": "longrope", "factor": 2.0})
    with pytest.raises(ValueError, match=r"type 'linear' needs the key 'factor', got keys \['type'\]"):
        scaling_from_hf({"type": "linear"})
    with pytest.raises(ValueError, match=r"type 'dynamic' needs 'original_max_position_embeddings' "
                                         r"in the dict or max_position_embeddings=, got neither"):
        scaling_from_hf({"type": "dynamic", "factor": 2.0})
    with pytest.raises(TypeError, match=r"rope_scaling must be a dict or None, got list"):
        scaling_from_hf([("type", "linear")])


HF_CASES = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 8.0, "beta_fast": 32.0, "beta_slow": 1.0},
    "yarn_deepseek": {"rope_type": "yarn", "factor": 4.0, "mscale": 0.707, "mscale_all_dim": 1.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 1024},
}


@pytest.mark.parametrize("name", sorted(HF_CASES))
def test_matches_transformers(name):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = dict(HF_CASES[name])
    theta, head_dim, max_pos = 10000.0, 64, 2048
    try:  # transformers >= 5: rope_parameters carries rope_theta
        config = LlamaConfig(head_dim=head_dim, max_position_embeddings=max_pos,
                             rope_parameters={**params, "rope_theta": theta})
        hf_params = config.rope_parameters
        assert hf_params["rope_type"] == params["rope_type"]
    except (TypeError, AssertionError, KeyError, AttributeError):
        config = LlamaConfig(head_dim=head_dim, max_position_embeddings=max_pos,
                             rope_theta=theta, rope_scaling=params)
    hf_inv_freq, hf_factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu")

    scaling = scaling_from_hf(params, max_position_embeddings=max_pos)
    inv_freq, factor = rope_inv_freq(head_dim, theta=theta, scaling=scaling)
    torch.testing.assert_close(inv_freq, hf_inv_freq.float(), rtol=1e-6, atol=0.0)
    assert factor == pytest.approx(hf_factor, rel=1e-6)
    if name == "dynamic":  # beyond the trained length the base grows with seq_len
        hf_long, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=5000)
        long, _ = rope_inv_freq(head_dim, theta=theta, scaling=scaling, seq_len=5000)
        torch.testing.assert_close(long, hf_long.float(), rtol=1e-6, atol=0.0)
        assert not torch.allclose(long, inv_freq)


# ---------------------------------------------------------------------------------- errors


def test_config_errors():
    with pytest.raises(ValueError, match=r"LinearScaling.factor must be a finite number > 0, got 0.0"):
        LinearScaling(factor=0)
    with pytest.raises(TypeError, match=r"LinearScaling.factor must be a number, got str \('2'\)"):
        LinearScaling(factor="2")
    with pytest.raises(ValueError, match=r"DynamicNTKScaling.factor must be a finite number >= 1, got 0.5"):
        DynamicNTKScaling(factor=0.5, original_max_positions=10)
    with pytest.raises(ValueError, match=r"DynamicNTKScaling.original_max_positions must be >= 1, got 0"):
        DynamicNTKScaling(factor=2, original_max_positions=0)
    with pytest.raises(TypeError, match=r"YarnScaling.original_max_positions must be an int, got float"):
        YarnScaling(factor=2, original_max_positions=4096.0)
    with pytest.raises(ValueError, match=r"YarnScaling.beta_fast \(1.0\) must be > beta_slow \(32.0\)"):
        YarnScaling(factor=2, original_max_positions=4096, beta_fast=1, beta_slow=32)
    with pytest.raises(ValueError, match=r"YarnScaling.mscale must be >= 0.0, got -1.0"):
        YarnScaling(factor=2, original_max_positions=4096, mscale=-1)
    with pytest.raises(ValueError, match=r"YarnScaling.attention_factor must be a finite number > 0, got 0.0"):
        YarnScaling(factor=2, original_max_positions=4096, attention_factor=0.0)
    with pytest.raises(TypeError, match=r"YarnScaling.truncate must be a bool, got int"):
        YarnScaling(factor=2, original_max_positions=4096, truncate=1)
    with pytest.raises(ValueError, match=r"Llama3Scaling.high_freq_factor \(1.0\) must be > low_freq_factor \(4.0\)"):
        Llama3Scaling(factor=8, low_freq_factor=4, high_freq_factor=1, original_max_positions=8192)


def test_configs_are_frozen():
    cfg = LinearScaling(2.0)
    with pytest.raises(AttributeError):
        cfg.factor = 3.0  # type: ignore[misc]


def test_inv_freq_errors():
    with pytest.raises(ValueError, match=r"rotary_dim must be even, got 7"):
        rope_inv_freq(7, theta=10000.0)
    with pytest.raises(ValueError, match=r"rotary_dim must be >= 2, got 0"):
        rope_inv_freq(0, theta=10000.0)
    with pytest.raises(ValueError, match=r"theta must be a finite number > 1, got 1.0"):
        rope_inv_freq(8, theta=1.0)
    with pytest.raises(TypeError, match=r"scaling must be None, LinearScaling, .* got dict"):
        rope_inv_freq(8, theta=10000.0, scaling={"type": "linear", "factor": 2})
    with pytest.raises(ValueError, match=r"rotary_dim must be >= 4 for DynamicNTKScaling, got 2"):
        rope_inv_freq(2, theta=10000.0, scaling=DynamicNTKScaling(2, 16))
    with pytest.raises(ValueError, match=r"seq_len must be >= 1, got 0"):
        rope_inv_freq(8, theta=10000.0, seq_len=0)
