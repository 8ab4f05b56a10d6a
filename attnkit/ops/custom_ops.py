"""The Triton flash-attention kernels as ``torch.library`` custom ops.

``attnkit::flash_attn_fwd`` and ``attnkit::flash_attn_bwd`` wrap the kernel launchers so that
``torch.compile(fullgraph=True)`` treats a call as one opaque node: each op has a fake (meta)
implementation giving output shapes without running anything, and the forward op carries its
autograd formula (``register_autograd``), which calls the backward op. Both are checked with
``torch.library.opcheck`` in the tests.

The ops take the already validated arguments of ``attnkit.attention`` (see
``attnkit.ops._triton_backend``); users call ``attnkit.attention(..., backend="triton")``.
"""

from __future__ import annotations

import torch

from attnkit.kernels.flash_bwd import flash_bwd
from attnkit.kernels.flash_fwd import flash_fwd


def _lse_shape(q: torch.Tensor, packed: bool) -> tuple[int, ...]:
    """LSE shape: dense ``[b, hq, sq]``, packed ``[hq, total_q]``."""
    if packed:
        return (q.shape[1], q.shape[0])
    return (q.shape[0], q.shape[2], q.shape[1])


@torch.library.custom_op("attnkit::flash_attn_fwd", mutates_args=())
def flash_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None,
                   cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None,
                   causal: bool, window_left: int, window_right: int, scale: float,
                   softcap: float, max_seqlen_q: int, max_seqlen_k: int, dropout_p: float,
                   dropout_seed: int, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash-attention forward: ``(out [.., hq, dv], lse float32)``; shapes of ``attnkit.attention``.

    ``deterministic`` is unused here; it is carried to the backward op.

    Example (q ``[2, 100, 8, 64]``, k/v ``[2, 100, 2, 64]`` on CUDA):
        >>> out, lse = torch.ops.attnkit.flash_attn_fwd(q, k, v, None, None, None, None, True,
        ...                                             -1, -1, 0.125, 0.0, 100, 100, 0.0, 0,
        ...                                             False)
        >>> lse.shape
        torch.Size([2, 8, 100])
    """
    return flash_fwd(q, k, v, causal=causal, window=(window_left, window_right), scale=scale,
                     softcap=softcap, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                     cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                     max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, dropout_p=dropout_p,
                     dropout_seed=dropout_seed)


@flash_attn_fwd.register_fake
def _flash_attn_fwd_fake(q, k, v, key_padding_mask, attn_mask, cu_seqlens_q, cu_seqlens_k, causal,
                         window_left, window_right, scale, softcap, max_seqlen_q, max_seqlen_k,
                         dropout_p, dropout_seed, deterministic):
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))  # [.., hq, dv]
    lse = q.new_empty(_lse_shape(q, cu_seqlens_q is not None), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("attnkit::flash_attn_bwd", mutates_args=())
def flash_attn_bwd(grad_out: torch.Tensor, grad_lse: torch.Tensor | None, q: torch.Tensor,
                   k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None,
                   cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None,
                   causal: bool, window_left: int, window_right: int, scale: float,
                   softcap: float, max_seqlen_q: int, max_seqlen_k: int, dropout_p: float,
                   dropout_seed: int, deterministic: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flash-attention backward: ``(dq, dk, dv)`` from the forward's saved ``out`` and ``lse``.

    ``grad_lse`` (the gradient of the returned LSE, or None) enters through ``delta``:
    ``ds = p * (dp - (rowsum(dO * O) - dLSE))``.
    """
    return flash_bwd(grad_out, q, k, v, out, lse, grad_lse=grad_lse, causal=causal,
                     window=(window_left, window_right), scale=scale, softcap=softcap,
                     key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                     cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                     max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, dropout_p=dropout_p,
                     dropout_seed=dropout_seed, deterministic=deterministic)


@flash_attn_bwd.register_fake
def _flash_attn_bwd_fake(grad_out, grad_lse, q, k, v, out, lse, *args):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


_OPTIONS = ("key_padding_mask", "attn_mask", "cu_seqlens_q", "cu_seqlens_k", "causal",
            "window_left", "window_right", "scale", "softcap", "max_seqlen_q", "max_seqlen_k",
            "dropout_p", "dropout_seed", "deterministic")


def _setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    # Options by name, never by position in the backward.
    ctx.options = dict(zip(_OPTIONS, inputs[3:]))


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    opts = ctx.options
    dq, dk, dv = flash_attn_bwd(grad_out, grad_lse, q, k, v, out, lse, opts["key_padding_mask"],
                                opts["attn_mask"], opts["cu_seqlens_q"], opts["cu_seqlens_k"],
                                opts["causal"], opts["window_left"], opts["window_right"],
                                opts["scale"], opts["softcap"], opts["max_seqlen_q"],
                                opts["max_seqlen_k"], opts["dropout_p"], opts["dropout_seed"],
                                opts["deterministic"])
    return (dq, dk, dv) + (None,) * len(_OPTIONS)


flash_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


class FlashAttention(torch.autograd.Function):
    """Eager twin of ``attnkit::flash_attn_fwd``: the same kernels with less dispatch overhead.

    ``torch.library`` custom ops cost a few hundred microseconds of host time per call with
    autograd, which shows on short sequences; outside ``torch.compile`` the Triton backend calls
    this Function instead. ``options`` holds ``flash_fwd``'s keyword arguments plus
    ``deterministic``.

    Example (``options`` as built by ``attnkit.ops._triton_backend.run``):
        >>> out, lse = FlashAttention.apply(q, k, v, options)
        >>> out.sum().backward()  # runs flash_bwd
    """

    @staticmethod
    def forward(ctx, q, k, v, options):
        fwd_options = {name: value for name, value in options.items() if name != "deterministic"}
        out, lse = flash_fwd(q, k, v, **fwd_options)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = options
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        if grad_out is None:  # only the LSE was used
            grad_out = torch.zeros_like(out)
        dq, dk, dv = flash_bwd(grad_out, q, k, v, out, lse, grad_lse=grad_lse, **ctx.options)
        return dq, dk, dv, None
