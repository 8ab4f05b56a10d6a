"""attnkit's own attention as a benchmark op: public ``attnkit.attention`` and nothing else.

The op passes ``backend=settings.backend`` through; the row records which backend actually served
the call (``auto`` falls back to the reference until the Triton kernels can serve it), so a
reference-backend number is never mistaken for a kernel's.

Example:
    >>> ATTNKIT.name, ATTNKIT.subject
    ('attnkit', True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import attnkit
from attnkit.bench.cases import AttentionCase
from attnkit.bench.registry import Op, Settings, Unsupported


def _options(case: AttentionCase, inputs: dict, settings: Settings) -> dict:
    opts = dict(causal=case.causal, window=case.window, backend=settings.backend)
    if case.packed:
        cu, longest = inputs["cu_seqlens"], inputs["max_seqlen"]
        opts.update(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=longest, max_seqlen_k=longest)
    return opts


def serving_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, opts: dict) -> str:
    """Name of the backend ``attnkit.attention(q, k, v, **opts)`` dispatches to.

    Reads attnkit's dispatcher (``attnkit.ops`` internals); if those change shape, the answer
    is a note saying so rather than a failed benchmark.

    Raises:
        Unsupported: the requested backend cannot serve the call (attnkit's reasons).
    """
    full = dict(causal=False, window=(-1, -1), scale=None, softcap=0.0, key_padding_mask=None,
                attn_mask=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                max_seqlen_k=None, dropout_p=0.0, generator=None, return_lse=False)
    full.update(opts)
    try:
        from attnkit.ops import backends
        from attnkit.ops.attention import _validate

        call = _validate(q, k, v, **full)
        return backends.select(call, full["backend"]).name
    except ValueError as exc:
        raise Unsupported(str(exc)) from exc
    except (ImportError, AttributeError, TypeError) as exc:
        return f"{full['backend']} (which one is unknown: {type(exc).__name__})"


def _build(case: AttentionCase, inputs: dict, settings: Settings) -> Callable[[], torch.Tensor]:
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    opts = _options(case, inputs, settings)
    chosen = serving_backend(q, k, v, opts)

    def forward() -> torch.Tensor:
        return attnkit.attention(q, k, v, **opts)  # [b, s, hq, dv] or [total, hq, dv]

    forward.detail = f"backend {chosen}"
    before = _gluon_calls()
    forward.describe = lambda: f"backend {chosen}{_tiles(chosen, before)}"
    return forward


_GLUON = {"fwd": "attnkit.kernels.flash_fwd_gluon", "dkdv": "attnkit.kernels.flash_bwd_gluon",
          "dq": "attnkit.kernels.flash_dq_gluon"}


def _gluon_calls() -> dict:
    """Launches so far of each Gluon kernel (0 for one never imported)."""
    import sys

    return {name: getattr(sys.modules.get(mod), "calls", 0) for name, mod in _GLUON.items()}


def _tiles(chosen: str, before: dict) -> str:
    """The kernels that served the case: a Gluon kernel launched since ``before``
    (``_gluon_calls``) with its tiling, else the Triton kernel's last autotuned tiles
    (``BLOCK_MxBLOCK_N wW sS``: the dQ kernel's entry may be an earlier case's where this one
    took atomics); "" when the kernels did not serve the call."""
    import sys

    if chosen != "triton" or "attnkit.kernels.flash_bwd" not in sys.modules:
        return ""
    from attnkit.kernels import flash_bwd, flash_fwd

    parts = []
    after = _gluon_calls()
    for name, kernel in (("fwd", flash_fwd._flash_fwd_kernel),
                         ("dkdv", flash_bwd._bwd_dkdv_kernel), ("dq", flash_bwd._bwd_dq_kernel)):
        if after.get(name, 0) > before.get(name, 0):
            parts.append(f"{name} gluon {sys.modules[_GLUON[name]].tiling}")
            continue
        cfg = getattr(kernel, "best_config", None)
        if cfg is None:
            continue
        blocks = "x".join(str(v) for k, v in cfg.kwargs.items() if k.startswith("BLOCK"))
        parts.append(f"{name} {blocks} w{cfg.num_warps} s{cfg.num_stages}")
    return "; tiles " + ", ".join(parts) if parts else ""


ATTNKIT = Op(name="attnkit", build=_build, subject=True,
             label="attnkit.attention (backend as requested; the row names the one that served)")
