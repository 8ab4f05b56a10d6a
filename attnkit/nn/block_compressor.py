"""``BlockCompressor``: NSA's phi, turning a window of keys (or values) into one summary."""

from __future__ import annotations

import torch
from torch import nn

from attnkit.ops._checks import check_choice, check_int, check_tensor

__all__ = ["BlockCompressor"]

KINDS = ("mlp", "mean")


class BlockCompressor(nn.Module):
    """Summarise each window of ``block`` vectors of one head into one vector.

    ``kind="mlp"`` (the NSA paper's learnable phi with intra-block position encoding)::

        phi(w) = fc2(silu(fc1(flatten(w + pos))))     w: [block, head_dim] -> [head_dim]

    with ``pos`` a learned ``[block, head_dim]`` position embedding (initialised N(0, 0.02)),
    ``fc1: block * head_dim -> hidden`` and ``fc2: hidden -> head_dim``. One compressor is shared
    by every KV head. ``kind="mean"``: the mean of the window, no parameters.

    Args:
        head_dim: size of each vector, >= 1.
        block: vectors per window, >= 1.
        kind: ``"mlp"`` or ``"mean"``.
        hidden: width of the MLP's hidden layer (default ``head_dim``); MLP only.

    Raises:
        TypeError / ValueError: invalid arguments (messages name the argument).

    Example:
        >>> phi = BlockCompressor(16, 8)
        >>> phi(torch.randn(2, 5, 4, 8, 16)).shape     # [b, nc, hk, block, d] -> [b, nc, hk, d]
        torch.Size([2, 5, 4, 16])
    """

    def __init__(self, head_dim: int, block: int, *, kind: str = "mlp",
                 hidden: int | None = None) -> None:
        super().__init__()
        check_int("head_dim", head_dim, minimum=1)
        check_int("block", block, minimum=1)
        self.kind = check_choice("compressor", kind, KINDS)
        self.head_dim, self.block = head_dim, block
        if kind == "mean":
            if hidden is not None:
                raise ValueError(f"hidden applies to the mlp compressor, got hidden={hidden} "
                                 "with kind='mean'")
            self.pos = self.fc1 = self.fc2 = None
            return
        hidden = head_dim if hidden is None else hidden
        check_int("hidden", hidden, minimum=1)
        self.pos = nn.Parameter(torch.empty(block, head_dim))
        self.fc1 = nn.Linear(block * head_dim, hidden)
        self.fc2 = nn.Linear(hidden, head_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Position embedding ~ N(0, 0.02), PyTorch's Linear init for the MLP."""
        if self.pos is None:
            return
        with torch.no_grad():
            self.pos.normal_(0.0, 0.02)
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Summaries of ``windows`` ``[..., block, head_dim]`` -> ``[..., head_dim]``.

        Raises:
            ValueError: the last two dims are not ``[block, head_dim]``.
        """
        check_tensor("windows", windows)
        if windows.ndim < 2 or tuple(windows.shape[-2:]) != (self.block, self.head_dim):
            raise ValueError(f"windows must be [..., block={self.block}, head_dim="
                             f"{self.head_dim}], got shape {tuple(windows.shape)}")
        if self.kind == "mean":
            return windows.mean(dim=-2)
        flat = (windows + self.pos).flatten(-2)  # [..., block * head_dim]
        return self.fc2(nn.functional.silu(self.fc1(flat)))  # [..., head_dim]

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, block={self.block}, kind={self.kind!r}"
