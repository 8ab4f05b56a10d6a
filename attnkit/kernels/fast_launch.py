"""Launching a jitted Triton kernel again without Triton's per-call argument binding.

``fn[grid](*args, **kwargs)`` binds every argument in Python on each call: it specialises each
one (dtype and 16-byte alignment of tensors; ints equal to 1, divisible by 16, 32 or 64 bits),
builds the compile key, looks up the compiled kernel and checks the globals it read. For the
flash kernels (45-65 arguments) that is 35-65 us of host time per launch on the H200
machine's CPU (``benchmarks/results/probe-host-h200-2026-12-01.txt``): the forward's single
launch and the backward's three make a 1k-token causal call host-bound in a benchmark that
flushes the L2 between calls.

``run(fn, grid, args, kwargs)`` keeps, per kernel, the compiled kernel of each call key: the
current device, every keyword argument (constexprs and launch options), where the tensors
sit, every other argument's type and value, and each tensor's dtype and address modulo 16.
That key is at least as fine as Triton's specialisation (equal values specialise alike), so a kept kernel is
the one Triton's own lookup would return. A hit launches it directly (``compiled[grid]``,
which still honours Triton's launch hooks); a miss goes through ``fn.run`` and keeps what it
returns. Not covered: a Triton option changed by environment variable mid-process
(``TRITON_DEBUG``) and a global a kernel reads being rebound; attnkit does neither.
The Gluon kernels (``flash_*_gluon.py``) launch through it too: a Gluon function is a
``JITFunction`` with the same binding. ``ATTNKIT_FAST_LAUNCH=0`` (read at import) turns the
cache off; it is never used under ``TRITON_INTERPRET=1``.

Example (inside a launcher; ``grid`` a tuple or a callable of the meta-parameters):
    >>> run(_bwd_preprocess, grid, (out, do, lse, ...), dict(HQ=16, DV=128, BLOCK_M=64))
"""

from __future__ import annotations

import os

import torch

ENABLED = (os.environ.get("ATTNKIT_FAST_LAUNCH", "1") != "0"
           and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"))
MAX_ENTRIES = 256  # kept kernels per jitted function before its table is cleared
HITS = 0  # launches served from a kept kernel (tests read it)

_TABLES: dict[int, dict[tuple, tuple]] = {}  # id(fn) -> call key -> (compiled, tail, meta)
_PLAIN_TYPES: set[tuple[type, ...]] = set()  # non-tensor argument types seen without a tensor
_TENSOR_SLOTS: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...] | int]] = {}


def slots(owner, args: tuple) -> tuple[tuple[int, ...], tuple[int, ...] | int]:
    """(tensor positions, the others: a start index when they all follow the tensors) of
    ``args``, kept per ``owner`` (a kernel) and argument count; ``forget_slots`` when a call
    does not fit them. ``flash_common``'s autotune key reads its dtypes through this too."""
    where = (id(owner), len(args))
    kept = _TENSOR_SLOTS.get(where)
    if kept is None:
        tensors = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        others = tuple(i for i in range(len(args)) if i not in tensors)
        if tensors == tuple(range(len(tensors))):
            others = len(tensors)
        kept = _TENSOR_SLOTS[where] = (tensors, others)
    return kept


def forget_slots(owner, args: tuple) -> None:
    """Drop the kept positions of ``owner``'s calls with as many arguments as ``args``."""
    _TENSOR_SLOTS.pop((id(owner), len(args)), None)


def call_key(fn, args: tuple, kwargs: dict) -> tuple:
    """The cache key of one call (see the module docstring). The tensors' positions are kept
    per kernel and argument count, and rescanned when a call does not fit them."""
    tensors, others = slots(fn, args)
    try:
        picked = list(map(args.__getitem__, tensors))
        dtypes = tuple([t.dtype for t in picked])
        align = tuple([t.data_ptr() & 15 for t in picked])
    except AttributeError:  # a position that held a tensor holds something else now
        forget_slots(fn, args)
        return call_key(fn, args, kwargs)
    scalars = args[others:] if isinstance(others, int) else tuple(map(args.__getitem__, others))
    types = tuple(map(type, scalars))  # 1, True and 1.0 are equal keys but specialise apart
    if types not in _PLAIN_TYPES:
        if any(issubclass(t, torch.Tensor) for t in set(types)):  # a tensor moved: rescan
            forget_slots(fn, args)
            return call_key(fn, args, kwargs)
        _PLAIN_TYPES.add(types)
    return (torch.cuda.current_device(), tuple(kwargs), tuple(kwargs.values()), tensors,
            scalars, types, dtypes, align)


def _tail(fn, count: int, kwargs: dict) -> tuple | None:
    """Values of the kernel's parameters after the first ``count``, in signature order (what
    Triton passes to the compiled kernel), or None when one is neither given nor defaulted."""
    tail = []
    for param in fn.params[count:]:
        name = param.name
        if name in kwargs:
            tail.append(kwargs[name])
        elif param.has_default:
            tail.append(param.default)
        else:
            return None
    return tuple(tail)


def _grid3(grid, meta: dict) -> tuple[int, int, int]:
    g = grid(meta) if callable(grid) else grid
    return (g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1)


def run(fn, grid, args: tuple, kwargs: dict) -> None:
    """``fn[grid](*args, **kwargs)`` for a ``triton.jit`` function, from the kept compiled
    kernel when this call's key was seen before.

    Args:
        fn: a ``triton.jit`` function (an autotuner's ``.fn``, with the config's keyword
            arguments and launch options in ``kwargs``).
        grid: a tuple, or a callable of the meta-parameters (on a hit it is given the
            keyword arguments only, not the positional ones as Triton does).
        args: positional arguments, in signature order from the first parameter.
        kwargs: every other parameter by name, plus launch options (``num_warps``, ...).

    Raises:
        Whatever ``fn[grid](*args, **kwargs)`` raises on a miss.
    """
    if not ENABLED:
        fn[grid](*args, **kwargs)
        return
    key = call_key(fn, args, kwargs)
    table = _TABLES.setdefault(id(fn), {})
    try:
        entry = table.get(key) if key is not None else None
    except TypeError:  # an unhashable keyword value: no keeping
        entry = key = None
    if entry is not None:
        global HITS
        HITS += 1
        compiled, tail, meta = entry
        compiled[_grid3(grid, meta)](*args, *tail)
        return
    compiled = fn.run(*args, grid=grid, warmup=False, **kwargs)
    tail = _tail(fn, len(args), kwargs)
    if key is None or tail is None or compiled is None or not hasattr(compiled, "function"):
        return
    if len(table) >= MAX_ENTRIES:
        table.clear()
    table[key] = (compiled, tail, dict(kwargs))


def clear() -> None:
    """Forget every kept kernel (tests)."""
    _TABLES.clear()
    _TENSOR_SLOTS.clear()
    _PLAIN_TYPES.clear()
