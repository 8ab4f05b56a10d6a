"""The tolerance rule of attnkit's tests (../shared/DESIGN.md).

A result's error against a float64 truth may be at most twice the error of PyTorch's own
same-dtype computation against that truth, plus a small absolute floor. Nothing looser.
"""

from __future__ import annotations

import torch

FLOORS = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def max_error(got: torch.Tensor, truth: torch.Tensor) -> float:
    """Largest absolute difference, treating equal infinities (e.g. LSE -inf) as exact."""
    got, truth = got.double(), truth.double()
    same_inf = torch.isinf(got) & torch.isinf(truth) & (torch.sign(got) == torch.sign(truth))
    diff = torch.where(same_inf, torch.zeros_like(got), (got - truth).abs())
    if diff.numel() == 0:
        return 0.0
    return float(torch.nan_to_num(diff.detach(), nan=float("inf")).max())


def assert_within_rule(name: str, got: torch.Tensor, truth: torch.Tensor,
                       baseline: torch.Tensor, *, dtype: torch.dtype) -> None:
    """Assert ``err(got) <= 2 * err(baseline) + floor(dtype)`` against ``truth``."""
    assert got.shape == truth.shape, f"{name}: shape {tuple(got.shape)} != {tuple(truth.shape)}"
    err = max_error(got, truth)
    base = max_error(baseline, truth)
    bound = 2 * base + FLOORS[dtype]
    assert err <= bound, f"{name}: error {err:.3e} > 2 x baseline {base:.3e} + floor"


def assert_exact64(name: str, got: torch.Tensor, truth: torch.Tensor) -> None:
    """For float64 computations: agreement to 1e-10."""
    assert got.shape == truth.shape, f"{name}: shape {tuple(got.shape)} != {tuple(truth.shape)}"
    err = max_error(got, truth)
    assert err <= 1e-10, f"{name}: error {err:.3e} > 1e-10"
