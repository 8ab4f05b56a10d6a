"""Backends of ``attnkit.attention`` and the dispatcher that picks one.

Each backend declares what it supports through ``unsupported_reason(call)``: None when it can
serve the call, else a sentence saying why not. ``backend="auto"`` takes the first backend in
``PREFERENCE`` that can serve the call; an explicitly requested backend that cannot serve it
raises ``ValueError`` with its reason and every other backend's, so the user sees what would work.
Backends compute the same function: a switch never changes the result beyond rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnkit.ops.call import AttentionCall
from attnkit.reference import attention as reference_attention


@dataclass(frozen=True)
class Backend:
    """A way to compute attention.

    Attributes:
        name: what users pass as ``backend=``.
        unsupported_reason: ``call -> str | None``; None when the backend can serve the call.
        run: ``call -> (out, lse)`` with the shapes of ``attnkit.attention``.
    """

    name: str
    unsupported_reason: Callable[[AttentionCall], str | None]
    run: Callable[[AttentionCall], tuple[torch.Tensor, torch.Tensor]]
    # Whether "auto" may pick it for this call (the Triton backend: CUDA tensors only, never
    # the CPU interpreter); an explicit backend= request ignores this.
    auto_eligible: Callable[[AttentionCall], bool] = lambda call: True


def _reference_run(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
    return reference_attention.attention(
        call.q, call.k, call.v, causal=call.causal, window=call.window, scale=call.scale,
        softcap=call.softcap, key_padding_mask=call.key_padding_mask, attn_mask=call.attn_mask,
        cu_seqlens_q=call.cu_seqlens_q, cu_seqlens_k=call.cu_seqlens_k,
        dropout_p=call.dropout_p, dropout_seed=call.dropout_seed)


REFERENCE = Backend(name="reference", unsupported_reason=lambda call: None, run=_reference_run)

_REGISTRY: dict[str, Backend] = {"reference": REFERENCE}
# Order in which "auto" tries backends: fastest first, the reference last.
PREFERENCE: list[str] = ["triton", "reference"]
_UNREGISTERED = {
    "triton": "the Triton kernels are not available in this installation (import of "
              "attnkit.kernels failed or triton is not installed)",
}


def _load_triton() -> None:
    """Register the Triton backend on first use; a missing triton keeps the reason above."""
    if "triton" in _REGISTRY or "triton" in _LOAD_FAILED:
        return
    try:
        from attnkit.ops import _triton_backend
    except ImportError as err:  # triton not installed, or the kernels failed to import
        _LOAD_FAILED["triton"] = str(err)
        if getattr(err, "name", None) == "triton":
            _UNREGISTERED["triton"] = "triton is not installed (pip install triton)"
        return
    except Exception as err:  # a broken triton install must not break the reference path
        _LOAD_FAILED["triton"] = str(err)
        _UNREGISTERED["triton"] = (f"the Triton kernels failed to import ({type(err).__name__}: "
                                   f"{err})")
        return
    register(Backend(name="triton", unsupported_reason=_triton_backend.unsupported_reason,
                     run=_triton_backend.run, auto_eligible=_triton_backend.auto_eligible))


_LOAD_FAILED: dict[str, str] = {}


def register(backend: Backend) -> None:
    """Add or replace a backend; used by ``attnkit.kernels`` when Triton imports."""
    _REGISTRY[backend.name] = backend


def known_backends() -> list[str]:
    """Every name ``backend=`` accepts, besides ``"auto"``."""
    return list(PREFERENCE)


def reasons(call: AttentionCall) -> dict[str, str | None]:
    """Each backend's reason it cannot serve ``call`` (None when it can)."""
    _load_triton()
    out: dict[str, str | None] = {}
    for name in PREFERENCE:
        backend = _REGISTRY.get(name)
        out[name] = _UNREGISTERED.get(name) if backend is None else backend.unsupported_reason(call)
    return out


def select(call: AttentionCall, requested: str) -> Backend:
    """The backend that serves ``call``: ``requested`` itself, or the first able one for "auto".

    Raises:
        ValueError: the requested backend cannot serve the call (every backend's reason listed).
    """
    _load_triton()
    if requested == "auto":
        for name in PREFERENCE:
            backend = _REGISTRY.get(name)
            if (backend is not None and backend.auto_eligible(call)
                    and backend.unsupported_reason(call) is None):
                return backend
    why = reasons(call)
    if requested != "auto" and why.get(requested) is None and requested in _REGISTRY:
        return _REGISTRY[requested]
    listed = "; ".join(f"{name}: {reason or 'can serve it'}" for name, reason in why.items())
    raise ValueError(f"backend={requested!r} cannot serve this call ({listed})")


def backend_status(device: torch.device | str) -> dict[str, str | None]:
    """Which backends can run a plain bf16/fp32 attention on ``device``, and why not.

    Used by ``attnkit info``. Returns ``{name: None or reason}``.
    """
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.empty(1, 1, 1, 64, device=device, dtype=dtype)
    call = AttentionCall(q=q, k=q, v=q, causal=False, window=(-1, -1), scale=0.125, softcap=0.0,
                         key_padding_mask=None, attn_mask=None, cu_seqlens_q=None,
                         cu_seqlens_k=None, max_seqlen_q=1, max_seqlen_k=1, dropout_p=0.0,
                         dropout_seed=0, return_lse=False)
    return reasons(call)
