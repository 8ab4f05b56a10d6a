"""``RMSNorm``: root-mean-square normalisation over the last dim, as Llama, Qwen3 and DeepSeek use."""

from __future__ import annotations

import torch
from torch import nn

from attnkit.ops._checks import check_int, check_number, check_tensor

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last dim.

    The statistics and the normalisation run in float32 (float64 for float64 inputs); the
    normalised value is cast back to x's dtype before the weight multiplies it, as Hugging Face's
    ``LlamaRMSNorm`` / ``Qwen3RMSNorm`` / ``DeepseekV3RMSNorm`` do, so their checkpoints give the
    same numbers. The parameter is named ``weight`` (Hugging Face's name).

    Args:
        dim: size of the normalised (last) dim, >= 1.
        eps: added to the mean square, >= 0.

    Raises:
        TypeError: ``dim`` not an int, ``eps`` not a number.
        ValueError: ``dim < 1`` or ``eps < 0``.

    >>> norm = RMSNorm(8, eps=1e-6)
    >>> norm(torch.randn(2, 3, 8)).shape           # [..., dim] -> [..., dim]
    torch.Size([2, 3, 8])
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, minimum=1)
        self.eps = check_number("eps", eps, minimum=0.0)
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set the weight to ones."""
        with torch.no_grad():
            self.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` ``[..., dim]``; returns the same shape, in the promoted dtype of x and weight.

        Raises:
            TypeError: x not a tensor.
            ValueError: x's last dim is not ``dim``.
        """
        check_tensor("x", x)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have last dim {self.dim}, got shape {tuple(x.shape)}")
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        xc = x.to(compute)  # [..., dim]
        normed = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps:g}"
