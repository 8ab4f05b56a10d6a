"""Backends of the sparse attention ops and the dispatcher that picks one.

The same contract as ``attnkit.ops.backends`` (one registry per op here, since each op has its
own call description): a backend declares ``unsupported_reason(call)`` (None when it can serve the
call, else why not) and ``run(call)``. ``backend="auto"`` takes the first able backend in
``PREFERENCE``; an explicit request that cannot be served raises ``ValueError`` listing every
backend's reason. Only the reference backend exists today; kernels register themselves later with
``register(op, backend)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PREFERENCE: list[str] = ["triton", "reference"]

# The ops that dispatch through this registry.
OPS = ("compressed_attention", "select_blocks", "selected_attention", "topk_token_attention",
       "route_segments")


@dataclass(frozen=True)
class SparseBackend:
    """A way to compute one sparse op.

    Attributes:
        name: what users pass as ``backend=``.
        unsupported_reason: ``call -> str | None``; None when the backend can serve the call.
        run: ``call -> result`` with the return convention of the op.
    """

    name: str
    unsupported_reason: Callable[[Any], str | None]
    run: Callable[[Any], Any]


_REGISTRY: dict[tuple[str, str], SparseBackend] = {}


def register(op: str, backend: SparseBackend) -> None:
    """Add or replace the backend ``backend.name`` of ``op`` (one of ``OPS``)."""
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    _REGISTRY[(op, backend.name)] = backend


def known_backends() -> list[str]:
    """Every name ``backend=`` accepts, besides ``"auto"``."""
    return list(PREFERENCE)


def reasons(op: str, call: Any) -> dict[str, str | None]:
    """Each backend's reason it cannot serve ``call`` of ``op`` (None when it can)."""
    out: dict[str, str | None] = {}
    for name in PREFERENCE:
        backend = _REGISTRY.get((op, name))
        if backend is None:
            out[name] = f"no {name} implementation of {op} is registered"
        else:
            out[name] = backend.unsupported_reason(call)
    return out


def select(op: str, call: Any, requested: str) -> SparseBackend:
    """The backend that serves ``call``: ``requested`` itself, or the first able one for "auto".

    Raises:
        ValueError: the requested backend cannot serve the call (every backend's reason listed).
    """
    why = reasons(op, call)
    if requested == "auto":
        for name in PREFERENCE:
            if why[name] is None:
                return _REGISTRY[(op, name)]
    elif why.get(requested, "unknown") is None:
        return _REGISTRY[(op, requested)]
    listed = "; ".join(f"{name}: {reason or 'can serve it'}" for name, reason in why.items())
    raise ValueError(f"backend={requested!r} cannot serve this {op} call ({listed})")
