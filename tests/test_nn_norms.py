"""``RMSNorm`` and ``LowRankProjection``."""

from __future__ import annotations

import pytest
import torch

from attnkit.nn import LowRankProjection, RMSNorm
from tests.tolerance import assert_within_rule


def _rms64(x, w, eps):
    x = x.double()
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) / x.shape[-1] + eps) * w.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rms_norm_against_float64(dtype):
    gen = torch.Generator().manual_seed(0)
    norm = RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + torch.randn(24, generator=gen))
    x = 3 * torch.randn(4, 5, 24, generator=gen)
    truth = _rms64(x, norm.weight, 1e-5)
    xd, wd = x.to(dtype), norm.weight.to(dtype)
    base = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5) * wd  # all in dtype
    got = norm.to(dtype)(xd)
    assert got.dtype == dtype
    assert_within_rule("rmsnorm", got, truth, base, dtype=dtype)


def test_rms_norm_meta_and_errors():
    with torch.device("meta"):
        norm = RMSNorm(8)
    norm = norm.to_empty(device="cpu")
    norm.reset_parameters()
    assert torch.equal(norm.weight, torch.ones(8))
    with pytest.raises(ValueError, match=r"x must have last dim 8, got shape \(2, 7\)"):
        norm(torch.randn(2, 7))
    with pytest.raises(ValueError, match="eps must be >= 0.0, got -1.0"):
        RMSNorm(8, eps=-1.0)
    with pytest.raises(ValueError, match="dim must be >= 1, got 0"):
        RMSNorm(0)


def test_low_rank_projection_factorises_through_a_normalised_bottleneck():
    torch.manual_seed(0)
    proj = LowRankProjection(32, 8, 48, norm_eps=1e-6, bias=True)
    with torch.no_grad():
        proj.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, dtype=torch.float64)
    truth = _rms64(x @ proj.down_proj.weight.double().T + proj.down_proj.bias.double(),
                   proj.norm.weight, 1e-6) @ proj.up_proj.weight.double().T
    x32 = x.float()
    h = x32 @ proj.down_proj.weight.T + proj.down_proj.bias
    base = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * proj.norm.weight
            ) @ proj.up_proj.weight.T
    got = proj(x32)
    assert got.shape == (2, 3, 48) and proj.up_proj.bias is None
    assert_within_rule("low rank", got, truth, base, dtype=torch.float32)
    before = proj.down_proj.weight.clone()
    proj.reset_parameters()
    assert not torch.equal(before, proj.down_proj.weight)
    assert torch.equal(proj.norm.weight, torch.ones(8))
    with pytest.raises(ValueError, match="bottleneck must be >= 1, got 0"):
        LowRankProjection(32, 0, 48)
