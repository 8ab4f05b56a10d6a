"""One check of ``attnkit.attention(backend="triton")`` against the float64 oracle.

Shared by the interpreter tests (``tests/test_triton_attention.py``, CPU CI) and the GPU suite
(``tests/gpu/test_flash_gpu.py``). The tolerance rule of ../shared/DESIGN.md: the kernel's error
against the float64 truth is at most twice PyTorch's own same-dtype error (the oracle run in the
input dtype, with autograd for the gradients) plus a small floor. Float32 inputs use ``tf32x3``
products in the kernels, held to PyTorch's plain float32 math (no ``allow_tf32``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch

import attnkit
from attnkit.reference.philox import dropout_keep
from tests.oracle import attention64
from tests.tolerance import assert_within_rule


@dataclass(frozen=True)
class Case:
    """Shape ``(batch, seq_q, seq_k, heads_q, heads_k, head_dim, head_dim_v)`` and options.

    ``segments``: packed (q_len, k_len) pairs instead of a dense batch (batch is ignored).
    ``mask``: None, or (kind, shape-builder name) of a dense attn_mask: kind "bool"/"additive",
    shape "full" ``[b, h, sq, sk]``, "heads" ``[1, h, sq, sk]``, "rows" ``[sq, sk]``, "keys"
    ``[1, 1, sk]``.
    """

    shape: tuple[int, int, int, int, int, int, int]
    causal: bool = False
    window: tuple[int, int] = (-1, -1)
    softcap: float = 0.0
    kpm: bool = False
    mask: tuple[str, str] | None = None
    dropout_p: float = 0.0
    segments: tuple[tuple[int, int], ...] | None = None
    lse_grad: bool = False
    options: dict = field(default_factory=dict)


def _mask_shape(name: str, b: int, h: int, sq: int, sk: int) -> tuple[int, ...]:
    return {"full": (b, h, sq, sk), "heads": (1, h, sq, sk), "rows": (sq, sk),
            "keys": (1, 1, sk)}[name]


def _keep_mask(seed: int, p: float, b: int, h: int, sq: int, sk: int, batch_index: int | None):
    """Dropout keep mask ``[b, h, sq, sk]`` of attnkit's Philox contract."""
    batches = torch.arange(b) if batch_index is None else torch.full((b,), batch_index)
    bh = (batches.view(b, 1) * h + torch.arange(h)).view(-1, 1, 1)
    keep = dropout_keep(seed, p, batch_head=bh, rows=torch.arange(sq).view(1, -1, 1),
                        cols=torch.arange(sk).view(1, 1, -1))
    return keep.view(b, h, sq, sk)


def _oracle(q, k, v, case: Case, *, kpm, mask, seed, dtype, cu_q=None, cu_k=None):
    """(out, lse) of the oracle in ``dtype`` (float64: the truth), dense or packed."""
    opts = dict(causal=case.causal, window=case.window, softcap=case.softcap, dtype=dtype,
                dropout_p=case.dropout_p, scale=case.options.get("scale"))
    if cu_q is None:
        keep = None
        if case.dropout_p > 0:
            keep = _keep_mask(seed, case.dropout_p, q.shape[0], q.shape[2], q.shape[1],
                              k.shape[1], None).to(q.device)
        return attention64(q, k, v, key_padding_mask=kpm, attn_mask=mask, keep=keep, **opts)
    outs, lses = [], []
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for n in range(len(cq) - 1):
        qs, ks, vs = (t[a:b][None] for t, a, b in ((q, cq[n], cq[n + 1]), (k, ck[n], ck[n + 1]),
                                                   (v, ck[n], ck[n + 1])))
        keep = None
        if case.dropout_p > 0:
            keep = _keep_mask(seed, case.dropout_p, 1, q.shape[1], qs.shape[1], ks.shape[1],
                              n).to(q.device)
        o, lse = attention64(qs, ks, vs, keep=keep, **opts)
        outs.append(o[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=1)


def _inputs(case: Case, dtype: torch.dtype, device: str, seed: int):
    b, sq, sk, hq, hk, d, dv = case.shape
    g = torch.Generator().manual_seed(seed)
    cu_q = cu_k = None
    if case.segments is not None:
        lens_q = [s[0] for s in case.segments]
        lens_k = [s[1] for s in case.segments]
        cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
        cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
        q_shape, k_shape, v_shape = (sum(lens_q), hq, d), (sum(lens_k), hk, d), (sum(lens_k), hk,
                                                                                   dv)
    else:
        q_shape, k_shape, v_shape = (b, sq, hq, d), (b, sk, hk, d), (b, sk, hk, dv)
    q = torch.randn(q_shape, generator=g, dtype=torch.float64)
    k = torch.randn(k_shape, generator=g, dtype=torch.float64)
    v = torch.randn(v_shape, generator=g, dtype=torch.float64)
    if case.softcap:
        q = q * 3  # scores large enough for the cap to bite
    kpm = mask = None
    if case.kpm:
        kpm = torch.rand(b, sk, generator=g) > 0.3
        kpm[0] = False  # a batch entry that sees no key at all
    if case.mask is not None:
        kind, where = case.mask
        m_shape = _mask_shape(where, b, hq, sq, sk)
        if kind == "bool":
            mask = torch.rand(m_shape, generator=g) > 0.3
        else:
            mask = torch.randn(m_shape, generator=g, dtype=torch.float64)
    grad_out = torch.randn((*q_shape[:-1], dv), generator=g, dtype=torch.float64)
    lse_shape = (hq, q_shape[0]) if cu_q is not None else (b, hq, sq)
    grad_lse = torch.randn(lse_shape, generator=g, dtype=torch.float64) if case.lse_grad else None

    def to(t, dt=None):
        if t is None:
            return None
        return t.to(device=device, dtype=dt if dt is not None and t.is_floating_point()
                    else t.dtype)

    return dict(q=q, k=k, v=v, kpm=kpm, mask=mask, grad_out=grad_out, grad_lse=grad_lse,
                cu_q=cu_q, cu_k=cu_k), to


def _grads(out, lse, tensors, grad_out, grad_lse):
    outputs, grads = [out], [grad_out.to(device=out.device, dtype=out.dtype)]
    if grad_lse is not None:
        finite = torch.isfinite(lse)
        outputs.append(torch.where(finite, lse, torch.zeros_like(lse)))
        grads.append(grad_lse.to(device=lse.device, dtype=lse.dtype))
    return torch.autograd.grad(outputs, tensors, grads)


def check(case: Case, *, dtype: torch.dtype, device: str, seed: int = 0,
          deterministic: bool = False, dq_mode: str | None = None,
          tma: str | None = None) -> dict:
    """Run ``case`` through the Triton backend and assert the tolerance rule on every output.

    ``tma`` sets ``ATTNKIT_FLASH_TMA`` (which kernels read tiles through TMA descriptors:
    ``"all"``, ``"none"``, a comma list); by default the launcher's own choice.

    ``dq_mode`` forces the backward's dQ path (``"atomic"`` or ``"kernel"``); by default
    ``"kernel"`` when ``deterministic`` else ``"atomic"``, so both paths are tested whatever
    the launcher would pick for the shape.

    Returns the kernel's results (``out``, ``lse``, ``dq``, ``dk``, ``dv``) for further checks.
    """
    data, to = _inputs(case, dtype, device, seed)
    q, k, v = (to(data[n], dtype).requires_grad_() for n in ("q", "k", "v"))
    kpm, mask = to(data["kpm"]), to(data["mask"], dtype)
    cu_q, cu_k = to(data["cu_q"]), to(data["cu_k"])
    gen = torch.Generator().manual_seed(seed + 1)
    drop_seed = 0
    if case.dropout_p > 0:
        drop_seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(
            seed + 1)).item())
    if dq_mode is None:
        dq_mode = "kernel" if deterministic else "atomic"
    with _env("ATTNKIT_FLASH_DQ", dq_mode), _env("ATTNKIT_FLASH_TMA", tma):
        out, lse = _run(q, k, v, case, kpm, mask, cu_q, cu_k, gen, deterministic)
        dq, dk, dv = _grads(out, lse, (q, k, v), data["grad_out"], data["grad_lse"])
    return _compare(case, data, to, out, lse, (dq, dk, dv), device, dtype, drop_seed, kpm,
                    cu_q)


def _run(q, k, v, case, kpm, mask, cu_q, cu_k, gen, deterministic):
    return attnkit.attention(
        q, k, v, causal=case.causal, window=case.window, softcap=case.softcap,
        key_padding_mask=kpm, attn_mask=mask, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
        dropout_p=case.dropout_p, generator=gen, return_lse=True, deterministic=deterministic,
        backend="triton", **case.options)


def _compare(case, data, to, out, lse, grads, device, dtype, drop_seed, kpm, cu_q):
    """Assert the tolerance rule on out, lse and grads; return them by name."""
    dq, dk, dv = grads

    q64, k64, v64 = (data[n].to(device).requires_grad_() for n in ("q", "k", "v"))
    mask64 = to(data["mask"])
    t_out, t_lse = _oracle(q64, k64, v64, case, kpm=kpm, mask=mask64, seed=drop_seed,
                           dtype=torch.float64, cu_q=data["cu_q"], cu_k=data["cu_k"])
    t_grads = _grads(t_out, t_lse, (q64, k64, v64), data["grad_out"].to(device),
                     to(data["grad_lse"]))
    qb, kb, vb = (data[n].to(device=device, dtype=dtype).requires_grad_()
                  for n in ("q", "k", "v"))
    b_out, b_lse = _oracle(qb, kb, vb, case, kpm=kpm, mask=to(data["mask"], dtype),
                           seed=drop_seed, dtype=dtype, cu_q=data["cu_q"], cu_k=data["cu_k"])
    b_grads = _grads(b_out, b_lse, (qb, kb, vb), data["grad_out"].to(device),
                     to(data["grad_lse"]))
    assert_within_rule("out", out, t_out, b_out, dtype=dtype)
    assert_within_rule("lse", lse, t_lse, b_lse.float(), dtype=dtype)
    for name, got, truth, base in zip(("dq", "dk", "dv"), (dq, dk, dv), t_grads, b_grads):
        assert torch.isfinite(got).all(), f"{name} has non-finite values"
        assert_within_rule(name, got, truth, base, dtype=dtype)
    empty = torch.isinf(t_lse)
    if empty.any():
        assert torch.all(torch.isinf(lse[empty]) & (lse[empty] < 0)), "empty rows: lse != -inf"
        rows = empty.transpose(-1, -2) if cu_q is None else empty.transpose(0, 1)
        assert torch.all(out[rows] == 0), "rows that see no key must be zeros"
    return dict(out=out, lse=lse, dq=dq, dk=dk, dv=dv)


@contextlib.contextmanager
def _env(name: str, value: str | None):
    """Set an environment variable for the block (None: leave it as it is)."""
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
