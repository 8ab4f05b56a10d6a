"""The validated description of one attention call, handed from ``attnkit.attention`` to a backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionCall:
    """Every input of one ``attnkit.attention`` call after validation and defaulting.

    Shapes are those of ``attnkit.attention``: dense q ``[b, sq, hq, d]``, k ``[b, sk, hk, d]``,
    v ``[b, sk, hk, dv]``; packed ``[total, h, d]`` with int32 ``cu_seqlens_q/k`` ``[n + 1]``.
    ``attn_mask`` is always 4-D here (leading dims of size 1 added). ``scale`` is resolved,
    ``window`` is a tuple, ``max_seqlen_q/k`` are the longest segment (dense: the sequence
    lengths), ``dropout_seed`` is the Philox seed drawn for this call.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    causal: bool
    window: tuple[int, int]
    scale: float
    softcap: float
    key_padding_mask: torch.Tensor | None
    attn_mask: torch.Tensor | None
    cu_seqlens_q: torch.Tensor | None
    cu_seqlens_k: torch.Tensor | None
    max_seqlen_q: int
    max_seqlen_k: int
    dropout_p: float
    dropout_seed: int
    return_lse: bool
    # Backward without atomics (bitwise reproducible); see ``attnkit.attention``.
    deterministic: bool = False

    @property
    def packed(self) -> bool:
        """True for a packed variable-length batch (``cu_seqlens`` given)."""
        return self.cu_seqlens_q is not None

    @property
    def needs_grad(self) -> bool:
        """True when autograd will ask for gradients of q, k or v."""
        return torch.is_grad_enabled() and any(
            t.requires_grad for t in (self.q, self.k, self.v))
