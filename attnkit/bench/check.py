"""The correctness check that runs before any timing: attnkit against SDPA math in fp32.

Truth: ``torch.nn.functional.scaled_dot_product_attention`` on the math backend, in float32, with
the visibility mask spelled out from its definition (bottom-right causal, window, documents).
Baseline: the same math backend on the case's own dtype, i.e. PyTorch's own same-dtype error.
The tolerance rule of DESIGN.md: ``error(attnkit) <= 2 * error(baseline) + floor(dtype)``,
maximum absolute error, every compared tensor.

Long sequences do not fit a dense fp32 score matrix, so the check samples query rows (always the
first and the last): a row's output and its ``dq`` depend only on that row's query and all keys,
so they are exact to compare. ``dk`` and ``dv`` need every row; they are compared when every
row is sampled (short sequences); the full gradient matrix is ``pytest -m gpu``'s job.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnkit.bench.cases import AttentionCase, visibility
from attnkit.bench.registry import Check, Settings

FLOORS = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def max_error(got: torch.Tensor, truth: torch.Tensor) -> float:
    """Largest absolute difference (NaN counts as infinite)."""
    diff = (got.double() - truth.double()).abs()
    if diff.numel() == 0:
        return 0.0
    return float(torch.nan_to_num(diff, nan=float("inf")).max())


def sample_rows(seq: int, count: int, seed: int) -> torch.Tensor:
    """Sorted distinct query rows: all when ``seq <= count``, else the first, the last and
    ``count - 2`` random others. Returns int64 ``[m]``."""
    if seq <= count:
        return torch.arange(seq)
    gen = torch.Generator().manual_seed(seed)
    middle = torch.randperm(seq - 2, generator=gen)[: count - 2] + 1
    return torch.cat([torch.tensor([0, seq - 1]), middle]).sort().values


def _math_attention(case: AttentionCase, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """SDPA math on ``q [b, m, hq, d]``, ``k [b, s, hk, d]``, ``v [b, s, hk, dv]``, mask [m, s]."""
    with sdpa_kernel([SDPBackend.MATH]):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            scale=case.head_dim ** -0.5, enable_gqa=case.heads_q != case.heads_kv)
    return out.transpose(1, 2)  # [b, m, hq, dv]


def _reference_grads(case: AttentionCase, inputs: dict, rows: torch.Tensor, mask: torch.Tensor,
                     dtype: torch.dtype, full: bool) -> dict[str, torch.Tensor]:
    """Out (and gradients) of the sampled rows computed by SDPA math in ``dtype``."""
    batched = (lambda t: t[None]) if case.packed else (lambda t: t)  # packed -> batch of 1
    q = batched(inputs["q"].detach())[:, rows].to(dtype).requires_grad_()  # [b, m, hq, d]
    k = batched(inputs["k"].detach()).to(dtype).requires_grad_(full)  # [b, s, hk, d]
    v = batched(inputs["v"].detach()).to(dtype).requires_grad_(full)  # [b, s, hk, dv]
    dout = batched(inputs["dout"])[:, rows].to(dtype)  # [b, m, hq, dv]
    out = _math_attention(case, q, k, v, mask)
    wrt = (q, k, v) if full else (q,)
    grads = torch.autograd.grad(out, wrt, dout)
    result = {"out": out.detach(), "dq": grads[0]}
    if full:
        result["dk"], result["dv"] = grads[1], grads[2]
    return result


def check_attention(case: AttentionCase, inputs: dict, run: Callable[[], torch.Tensor],
                    settings: Settings) -> Check:
    """Run the subject once, forward and backward, and compare it with the fp32 truth.

    Returns:
        a ``Check`` with each compared tensor's error and bound.
    """
    out = run()  # [b, s, hq, dv] or packed [total, hq, dv]
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), inputs["dout"])
    rows = sample_rows(case.seq, settings.check_rows, settings.seed).to(q.device)
    full = rows.numel() == case.seq
    mask = visibility(case, rows, q.device)  # [m, s]
    truth = _reference_grads(case, inputs, rows, mask, torch.float32, full)
    base = _reference_grads(case, inputs, rows, mask, case.torch_dtype, full)

    batched = (lambda t: t[None]) if case.packed else (lambda t: t)
    got = {"out": batched(out.detach())[:, rows], "dq": batched(dq)[:, rows]}
    if full:
        got["dk"], got["dv"] = batched(dk), batched(dv)
    floor = FLOORS[case.torch_dtype]
    errors = {}
    for name, value in got.items():
        bound = 2 * max_error(base[name], truth[name]) + floor
        errors[name] = (max_error(value, truth[name]), bound)
    ok = all(err <= bound for err, bound in errors.values())
    detail = (f"{'all' if full else rows.numel()} of {case.seq} query rows; "
              f"{', '.join(errors)} vs SDPA math fp32")
    return Check(ok=ok, errors=errors, detail=detail)
