"""The benchmark registry: each suite is a named list of shapes crossed with a list of ops.

A suite lives in its own module under ``attnkit/bench/suites/`` and exposes ``SUITE``; every
module there is discovered on first use, so adding a suite means adding one file (for example
``suites/decode.py`` for ``attnkit.decode_attention``) and nothing else. A suite is declarative:

- ``cases(quick)``: the shapes, each with a readable ``name`` (``quick`` keeps a few of them);
- ``ops``: what is timed on every shape; the first op with ``subject=True`` is the one whose
  result is checked for correctness and compared with every other op (the peers);
- ``make_inputs(case, device, seed)``: fresh random inputs (never zeros) shared by all ops;
- ``check(case, inputs, run, settings)``: the correctness check of the subject before timing
  (and of every peer too when ``check_peers``);
- ``work(case, direction)``: FLOPs and minimum bytes of one pass, for rates and the roofline;
- ``directions``: which passes are measured (``"fwd"``, ``"bwd"``);
- ``measure``: ``"time"`` (CUDA-event medians) or ``"memory"`` (peak allocated bytes);
- ``unit``: the rate printed for timed suites, ``"TFLOP/s"`` (compute) or ``"TB/s"`` (bytes).

Example:
    >>> from attnkit.bench import registry
    >>> suite = registry.get("prefill")
    >>> suite.name, suite.unit
    ('prefill', 'TFLOP/s')
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

DIRECTIONS = ("fwd", "bwd")
MEASURES = ("time", "memory")
UNITS = ("TFLOP/s", "TB/s")


class Unsupported(Exception):
    """Raised by an op's ``build`` when it cannot run a case; the message says why."""


@dataclass(frozen=True)
class Settings:
    """How one ``attnkit bench`` run was asked to go.

    Attributes:
        device: where inputs live and ops run.
        backend: ``backend=`` passed to attnkit's ops (``"auto"``, ``"triton"``, ``"reference"``).
        quick: fewer shapes (``Suite.cases(quick=True)``).
        warmup_ms, rep_ms: warm-up and measuring time per timing (``triton.testing.do_bench``).
        check_rows: how many query rows the correctness check compares (sampled, all if fewer).
        seed: seed of the random inputs.
    """

    device: torch.device
    backend: str = "auto"
    quick: bool = False
    warmup_ms: float = 200.0
    rep_ms: float = 100.0
    check_rows: int = 256
    seed: int = 0


@dataclass(frozen=True)
class Work:
    """The work of one pass: FLOPs done and the fewest bytes it must move through memory."""

    flops: float
    bytes: float


@dataclass(frozen=True)
class Check:
    """Result of a correctness check: each compared tensor's error against the fp32 truth.

    Attributes:
        ok: every tensor within the tolerance rule.
        errors: ``name -> (error, bound)`` where ``bound = 2 * baseline error + floor``.
        detail: what was compared (rows, tensors), for the report.
    """

    ok: bool
    errors: dict[str, tuple[float, float]]
    detail: str = ""


@dataclass(frozen=True)
class Op:
    """One thing timed on every case of a suite.

    Attributes:
        name: short label in tables and JSON (``"attnkit"``, ``"sdpa-flash"``, ...).
        build: ``(case, inputs, settings) -> forward`` where ``forward()`` returns the output
            tensor (autograd-connected to the inputs that require grad); raises ``Unsupported``
            with the reason when this op cannot run the case.
        subject: True for attnkit's own op (checked, and compared with every peer).
        label: longer description for the report (e.g. which torch backend it is).
    """

    name: str
    build: Callable[[Any, dict, Settings], Callable[[], torch.Tensor]]
    subject: bool = False
    label: str = ""


@dataclass(frozen=True)
class Suite:
    """A named benchmark: shapes x ops, with the check, the work formula and what is measured."""

    name: str
    description: str
    cases: Callable[[bool], Sequence[Any]]
    ops: Sequence[Op]
    make_inputs: Callable[[Any, torch.device, int], dict]
    check: Callable[[Any, dict, Callable[[], torch.Tensor], Settings], Check] | None
    work: Callable[[Any, str], Work]
    directions: tuple[str, ...] = DIRECTIONS
    measure: str = "time"
    unit: str = "TFLOP/s"
    notes: tuple[str, ...] = field(default_factory=tuple)
    check_peers: bool = False

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"measure must be one of {list(MEASURES)}, got {self.measure!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {list(UNITS)}, got {self.unit!r}")
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise ValueError(f"directions must be a non-empty subset of {list(DIRECTIONS)}, got "
                             f"{list(self.directions)}")
        if sum(op.subject for op in self.ops) != 1:
            raise ValueError(f"suite {self.name!r} must have exactly one subject op, got "
                             f"{[op.name for op in self.ops if op.subject]}")
        names = [op.name for op in self.ops]
        if len(set(names)) != len(names):
            raise ValueError(f"suite {self.name!r} has duplicate op names: {names}")

    @property
    def subject(self) -> Op:
        """The op being benchmarked (attnkit's)."""
        return next(op for op in self.ops if op.subject)

    @property
    def peers(self) -> list[Op]:
        """Every op the subject is compared with."""
        return [op for op in self.ops if not op.subject]


_SUITES: dict[str, Suite] = {}
_BROKEN: dict[str, str] = {}  # suite module -> why it failed to import
_DISCOVERED = False


def register(suite: Suite) -> Suite:
    """Add (or replace) a suite by name; returns it, so a module can write ``SUITE = register(...)``."""
    if not isinstance(suite, Suite):
        raise TypeError(f"suite must be an attnkit.bench.registry.Suite, got "
                        f"{type(suite).__name__}")
    _SUITES[suite.name] = suite
    return suite


def _discover() -> None:
    """Import every module of ``attnkit.bench.suites`` once and register its ``SUITE``."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    from attnkit.bench import suites as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        try:
            module = importlib.import_module(f"{package.__name__}.{info.name}")
        except Exception as exc:  # one broken suite must not take the others down
            _BROKEN[info.name] = f"{type(exc).__name__}: {exc}"
            continue
        suite = getattr(module, "SUITE", None)
        if isinstance(suite, Suite) and suite.name not in _SUITES:
            register(suite)


def names() -> list[str]:
    """The names of every registered suite, sorted."""
    _discover()
    return sorted(_SUITES)


def broken() -> dict[str, str]:
    """Suite modules that failed to import, with the error (shown by ``--list``)."""
    _discover()
    return dict(_BROKEN)


def get(name: str) -> Suite:
    """The suite called ``name``.

    Raises:
        ValueError: no suite has that name (the known names, and modules that failed to import,
            are listed).
    """
    _discover()
    if name not in _SUITES:
        failed = "".join(f"; module suites/{m}.py failed to import ({why})"
                         for m, why in _BROKEN.items())
        raise ValueError(f"suite must be one of {sorted(_SUITES)}, got {name!r}{failed}")
    return _SUITES[name]
