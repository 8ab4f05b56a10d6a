"""``LowRankProjection``: a linear map factored through a normalised bottleneck (d9d's block)."""

from __future__ import annotations

import torch
from torch import nn

from attnkit.nn.norms import RMSNorm
from attnkit.ops._checks import check_int

__all__ = ["LowRankProjection"]


class LowRankProjection(nn.Module):
    """``up_proj(norm(down_proj(x)))``: ``in_features -> bottleneck -> out_features``.

    The low-rank query path of DeepSeek's MLA is this block (there its parameters carry Hugging
    Face's names ``q_a_proj``, ``q_a_layernorm``, ``q_b_proj``; see ``MultiHeadLatentAttention``).
    With ``bottleneck`` much smaller than both ends it costs ``bottleneck * (in + out)`` weights
    instead of ``in * out``.

    Args:
        in_features: input width, >= 1.
        bottleneck: rank of the factorisation, >= 1.
        out_features: output width, >= 1.
        norm_eps: epsilon of the RMSNorm on the bottleneck.
        bias: add a bias to the down-projection (DeepSeek's ``attention_bias``); the
            up-projection never has one.

    Raises:
        TypeError / ValueError: a size that is not an int >= 1; a bad ``norm_eps``.

    >>> proj = LowRankProjection(64, 16, 96, norm_eps=1e-6)
    >>> proj(torch.randn(2, 5, 64)).shape          # [b, s, in] -> [b, s, out]
    torch.Size([2, 5, 96])
    """

    def __init__(self, in_features: int, bottleneck: int, out_features: int, *,
                 norm_eps: float = 1e-6, bias: bool = False) -> None:
        super().__init__()
        check_int("in_features", in_features, minimum=1)
        check_int("bottleneck", bottleneck, minimum=1)
        check_int("out_features", out_features, minimum=1)
        self.down_proj = nn.Linear(in_features, bottleneck, bias=bias)
        self.norm = RMSNorm(bottleneck, eps=norm_eps)
        self.up_proj = nn.Linear(bottleneck, out_features, bias=False)

    def reset_parameters(self) -> None:
        """Re-initialise both projections (PyTorch's Linear init) and the norm (ones)."""
        self.down_proj.reset_parameters()
        self.norm.reset_parameters()
        self.up_proj.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` ``[..., in_features]`` to ``[..., out_features]``."""
        return self.up_proj(self.norm(self.down_proj(x)))  # [..., in] -> [..., r] -> [..., out]
