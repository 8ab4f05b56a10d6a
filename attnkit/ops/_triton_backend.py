"""The ``"triton"`` backend of ``attnkit.attention``: what the kernels serve, and the call.

``unsupported_reason(call)`` says precisely why the kernels cannot serve a call (None when they
can); ``run(call)`` runs them: under ``torch.compile`` through the ``attnkit::flash_attn_*``
custom ops (one opaque node, no graph break), in eager mode through an equivalent
``torch.autograd.Function`` (same kernels, less host overhead per call). ``"auto"`` picks this backend for CUDA tensors only, never for the
CPU interpreter (``auto_eligible``); ``backend="triton"`` on CPU tensors works under
``TRITON_INTERPRET=1`` (how CI tests the kernels).

Precision: fp16/bf16 inputs use their tensor-core products with float32 softmax and
accumulation; float32 inputs use tf32x3 products (three tf32 tensor-core products each: float32
accuracy, held to PyTorch's plain float32 math in the tests, at 3x the matmul work) and small
tiles; float64 is served by the reference only.

Additive masks: huge finite values (Hugging Face's ``finfo.min`` padding) are clamped to -1e38
before the base-2 scaling so they cannot overflow to ``-inf``; a query row masked only by such
values gets the reference's forward (a uniform average) and a finite LSE of that size, but the
gradient flowing from that row's own output is not the reference's (its LSE cannot hold
``log(n)`` next to 1e38). Such rows are padding whose outputs carry no gradient in practice.
"""

from __future__ import annotations

import torch

from attnkit.kernels.flash_common import device_capability, interpreting
from attnkit.kernels.flash_fwd import flash_fwd
from attnkit.ops import custom_ops  # registers torch.ops.attnkit.flash_attn_*
from attnkit.ops.call import AttentionCall

MAX_HEAD_DIM = 256
_INDEX_LIMIT = 2**31


def unsupported_reason(call: AttentionCall) -> str | None:
    """Why the Triton kernels cannot serve ``call``, or None when they can."""
    q = call.q
    if q.device.type != "cuda" and not interpreting():
        return (f"inputs are on {q.device.type}: the Triton kernels need CUDA tensors (set "
                "TRITON_INTERPRET=1 to test them on the CPU)")
    if (q.device.type == "cuda" and not torch.compiler.is_compiling()
            and device_capability(q.device) < (8, 0)):
        major, minor = device_capability(q.device)
        return (f"the GPU has compute capability {major}.{minor}: the Triton kernels need 8.0 "
                "or newer; use backend='reference'")
    if q.dtype == torch.float64:
        return "float64 is not supported by the kernels; use backend='reference'"
    if q.dtype == torch.bfloat16 and q.device.type != "cuda":
        return ("bfloat16 is not supported by Triton's CPU interpreter; use float16/float32 "
                "there, or CUDA tensors")
    d, dv = q.shape[-1], call.v.shape[-1]
    if max(d, dv) > MAX_HEAD_DIM:
        return (f"head dims up to {MAX_HEAD_DIM} are supported by the kernels, got q/k {d} and "
                f"v {dv}; use backend='reference'")
    if call.attn_mask is not None and call.attn_mask.requires_grad:
        return ("attn_mask requires grad: the kernels do not compute a mask gradient; use "
                "backend='reference' or detach the mask")
    rows = max(call.max_seqlen_q, call.max_seqlen_k)
    widest = max(t.stride(-3) if t.ndim == 4 else t.stride(0) for t in (q, call.k, call.v))
    if rows * widest >= _INDEX_LIMIT:
        return (f"a sequence of {rows} rows with row stride {widest} exceeds the kernels' "
                "32-bit in-sequence offsets; split the batch or use backend='reference'")
    if call.attn_mask is not None and call.max_seqlen_q * call.max_seqlen_k >= _INDEX_LIMIT:
        return "an attn_mask over more than 2**31 (query, key) pairs is not supported"
    return None


def auto_eligible(call: AttentionCall) -> bool:
    """``"auto"`` uses the kernels only on CUDA tensors, never through the interpreter."""
    return call.q.device.type == "cuda"


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def run(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the kernels: ``(out, lse)`` with the shapes of ``attnkit.attention``."""
    q, k, v = (_last_dim_contiguous(t) for t in (call.q, call.k, call.v))
    kpm = call.key_padding_mask
    if kpm is not None and kpm.stride(-1) != 1:
        kpm = kpm.contiguous()
    if torch.compiler.is_compiling():
        # One opaque node with a fake implementation: no graph break.
        return torch.ops.attnkit.flash_attn_fwd(
            q, k, v, kpm, call.attn_mask, call.cu_seqlens_q, call.cu_seqlens_k, call.causal,
            call.window[0], call.window[1], float(call.scale), float(call.softcap),
            call.max_seqlen_q, call.max_seqlen_k, float(call.dropout_p), call.dropout_seed,
            call.deterministic)
    options = dict(causal=call.causal, window=call.window, scale=float(call.scale),
                   softcap=float(call.softcap), key_padding_mask=kpm, attn_mask=call.attn_mask,
                   cu_seqlens_q=call.cu_seqlens_q, cu_seqlens_k=call.cu_seqlens_k,
                   max_seqlen_q=call.max_seqlen_q, max_seqlen_k=call.max_seqlen_k,
                   dropout_p=float(call.dropout_p), dropout_seed=call.dropout_seed)
    if not call.needs_grad:
        return flash_fwd(q, k, v, **options)
    options["deterministic"] = call.deterministic
    return custom_ops.FlashAttention.apply(q, k, v, options)
