"""Run a suite: for every case, check attnkit first, then time (or measure) it and every peer.

One process, one case at a time: fresh random inputs shared by every op; the subject op
(attnkit) runs forward and backward once and is compared with the fp32 truth before anything is
timed, and a failed check marks its row and skips its timing. Suites with ``check_peers`` check
every peer the same way, so that a ratio never silently compares two different functions (a peer
set up with the wrong mask, say); a peer that fails its check is still timed, and the report
flags it. Timing on CUDA is
``triton.testing.do_bench`` (CUDA events, L2 flushed between runs, the median); on other devices
(tests) a host-clock median. Forward runs with inputs that require grad (a training forward);
backward is ``out.backward(dout, retain_graph=True)`` alone, gradients reset to None each run.

A peer that cannot run a case becomes a row with ``status="unsupported"`` and torch's reason; an
error or out-of-memory becomes ``status="error"`` with its message. Nothing stops the run.

Example:
    >>> import torch
    >>> from attnkit.bench import registry
    >>> from attnkit.bench.harness import run_suite
    >>> settings = registry.Settings(device=torch.device("cpu"), backend="reference")
    >>> result = run_suite(registry.get("prefill"), settings, cases=["nothing matches"])
    >>> result["rows"]
    []
"""

from __future__ import annotations

import datetime
import gc
import importlib.util
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import attnkit
from attnkit.bench.ceilings import measure_ceilings
from attnkit.bench.registry import Op, Settings, Suite, Unsupported

MIB = 2**20


def environment(device: torch.device) -> dict:
    """Device, versions and date of this run, for the JSON results."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "gpu": None,
        "attnkit": attnkit.__version__,
        "torch": torch.__version__,
        "triton": None,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    if importlib.util.find_spec("triton") is not None:
        import triton

        env["triton"] = triton.__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "sms": props.multi_processor_count,
                      "memory_gib": round(props.total_memory / 2**30, 1)}
    return env


def time_ms(fn: Callable[[], object], settings: Settings,
            grad_to_none: Sequence[torch.Tensor] | None = None) -> float:
    """Median milliseconds of ``fn()``: CUDA events through ``triton.testing.do_bench`` on CUDA,
    a synchronised host clock elsewhere."""
    if settings.device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=settings.warmup_ms, rep=settings.rep_ms,
                              grad_to_none=grad_to_none, return_mode="median"))
    times = []
    deadline = time.perf_counter() + settings.rep_ms / 1000
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 100):
        for t in grad_to_none or ():
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


_NOISE = re.compile(r"\s*\(Triggered internally at [^)]*\)\.?")


def explain(exc: BaseException, caught: Sequence[warnings.WarningMessage] = ()) -> str:
    """A one-paragraph reason from an exception and the warnings torch raised before it (SDPA
    explains why it found no kernel only through warnings)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of memory: " + str(exc).splitlines()[0][:200]
    why = [_NOISE.sub("", str(w.message)).strip() for w in caught]
    why = [w for w in why if w and not w.endswith("because:") and "runtime disabled" not in w]
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = "; ".join(dict.fromkeys(why)) if why and _is_unsupported(exc) else first
    return text[:400]


def _is_unsupported(exc: BaseException) -> bool:
    """True for torch saying it has no kernel for a call (not for a crash or out of memory)."""
    text = str(exc).lower()
    return isinstance(exc, NotImplementedError) or "no available kernel" in text or \
        "no viable backend" in text


def _attempt(fn: Callable[[], object]) -> tuple[object, str | None, bool]:
    """Call ``fn``; return (value, None, False) or (None, reason, unsupported?)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn(), None, False
        except Unsupported as exc:
            return None, str(exc), True
        except Exception as exc:  # a peer's failure is a row of the report, not a crash
            return None, explain(exc, caught), _is_unsupported(exc)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device, inputs: dict, *, collect: bool = False) -> None:
    """Drop the inputs' gradients and return cached blocks (``collect``: run the garbage
    collector first, which costs a fraction of a second)."""
    for t in inputs.values():
        if isinstance(t, torch.Tensor):
            t.grad = None
    if device.type == "cuda":
        if collect:
            gc.collect()
        torch.cuda.empty_cache()


def _rate(unit: str, amount: dict, direction: str, ms: float | None) -> float | None:
    if ms is None or ms <= 0:
        return None
    per_second = 1000.0 / ms
    if unit == "TFLOP/s":
        return amount[f"{direction}_flops"] * per_second / 1e12
    return amount[f"{direction}_bytes"] * per_second / 1e12


def _new_row(suite: Suite, case, op: Op) -> dict:
    row = {"case": case.name, "params": case.describe() if hasattr(case, "describe") else {},
           "baseline": getattr(case, "baseline", None), "op": op.name, "subject": op.subject,
           "status": "ok", "reason": None, "detail": "", "check": None}
    for direction in suite.directions:
        work = suite.work(case, direction)
        row[f"{direction}_flops"], row[f"{direction}_bytes"] = work.flops, work.bytes
        row[f"{direction}_ms"] = row[f"{direction}_rate"] = row[f"{direction}_error"] = None
    if suite.measure == "memory":
        row.update(inputs_mib=None, fwd_peak_mib=None, fwd_bwd_peak_mib=None)
    return row


def _time_op(suite: Suite, row: dict, forward: Callable[[], torch.Tensor], inputs: dict,
             settings: Settings) -> None:
    """Fill the row's ``*_ms`` and ``*_rate`` (or ``*_error``) for each timed direction."""
    leaves = [inputs[n] for n in ("q", "k", "v") if n in inputs]
    if "fwd" in suite.directions:
        ms, reason, _ = _attempt(lambda: time_ms(forward, settings))
        row["fwd_ms"], row["fwd_error"] = ms, reason
    if "bwd" in suite.directions:
        def measure_backward() -> float:
            out = forward()
            dout = inputs["dout"]
            return time_ms(lambda: out.backward(dout, retain_graph=True), settings,
                           grad_to_none=leaves)

        ms, reason, _ = _attempt(measure_backward)
        row["bwd_ms"], row["bwd_error"] = ms, reason
    for direction in suite.directions:
        row[f"{direction}_rate"] = _rate(suite.unit, row, direction, row[f"{direction}_ms"])


def _measure_memory(suite: Suite, row: dict, forward: Callable[[], torch.Tensor], inputs: dict,
                    settings: Settings) -> None:
    """Fill the row's peak MiB of forward and of forward+backward above the inputs (CUDA)."""
    device = settings.device
    if device.type != "cuda":
        row["status"], row["reason"] = "skipped", f"peak memory is measured on CUDA only, got {device}"
        return

    def warm() -> None:  # compile and autotune outside the measured call
        forward().backward(inputs["dout"])

    def measure() -> None:
        _release(device, inputs, collect=True)
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = forward()
        _sync(device)
        row["fwd_peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / MIB
        out.backward(inputs["dout"])
        _sync(device)
        row["fwd_bwd_peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / MIB
        row["inputs_mib"] = before / MIB

    for step in (warm, measure):
        _, reason, _ = _attempt(step)
        if reason is not None:
            row["status"], row["reason"] = "error", reason
            return


def _run_op(suite: Suite, case, op: Op, inputs: dict, settings: Settings) -> dict:
    """Build, first call, check, then time or measure one op on one case; returns its row."""
    row = _new_row(suite, case, op)
    forward, reason, unsupported = _attempt(lambda: op.build(case, inputs, settings))
    if reason is None:
        row["detail"] = getattr(forward, "detail", "")
        # First call: compiles, or says why not; its output (and graph) is dropped at once.
        _, reason, unsupported = _attempt(lambda: forward() is None)
    if reason is not None:
        row["status"], row["reason"] = ("unsupported" if unsupported else "error"), reason
        return row
    if suite.check is not None and (op.subject or suite.check_peers):
        check, reason, _ = _attempt(lambda: suite.check(case, inputs, forward, settings))
        _release(settings.device, inputs)
        if reason is not None:
            row["check"] = {"ok": False, "detail": f"the check failed to run: {reason}",
                            "errors": {}}
        else:
            row["check"] = {"ok": check.ok, "detail": check.detail,
                            "errors": {k: {"error": e, "bound": b}
                                       for k, (e, b) in check.errors.items()}}
        if op.subject and not row["check"]["ok"]:  # attnkit is never timed unchecked
            if reason is not None:
                row["status"], row["reason"] = "error", row["check"]["detail"]
            else:
                worst = ", ".join(f"{k} {e:.3g} > {b:.3g}"
                                  for k, (e, b) in check.errors.items() if e > b)
                row["status"], row["reason"] = "check_failed", f"wrong result, not timed: {worst}"
            return row
    if suite.measure == "memory":
        _measure_memory(suite, row, forward, inputs, settings)
    else:
        _time_op(suite, row, forward, inputs, settings)
    describe = getattr(forward, "describe", None)
    if describe is not None:  # e.g. the tiles the autotuner picked for this case
        row["detail"] = describe()
    return row


def row_line(row: dict) -> str:
    """One line summarising a finished row, printed as the run goes."""
    head = f"{row['case']} / {row['op']} [{row.get('seconds', 0):.0f} s]: "
    if row["status"] != "ok":
        return head + f"{row['status']}: {row['reason']}"
    if "fwd_peak_mib" in row:
        return head + (f"peak fwd {row['fwd_peak_mib']:.0f} MiB, fwd+bwd "
                       f"{row['fwd_bwd_peak_mib']:.0f} MiB above {row['inputs_mib']:.0f} MiB")
    parts = []
    for d in ("fwd", "bwd"):
        if f"{d}_ms" not in row:
            continue
        if row[f"{d}_ms"] is None:
            parts.append(f"{d} error: {row[f'{d}_error']}")
        else:
            parts.append(f"{d} {row[f'{d}_ms']:.3f} ms ({row[f'{d}_rate']:.4g})")
    return head + ", ".join(parts)


def _select(items: Sequence, wanted: Sequence[str] | None) -> list:
    if not wanted:
        return list(items)
    return [x for x in items if any(w in x.name for w in wanted)]


def _resumed(fresh: dict, earlier: dict) -> dict:
    """``earlier`` continued by the run described by ``fresh`` (same suite, settings, ops, GPU)."""
    for key in ("suite", "settings", "ops"):
        if earlier.get(key) != fresh[key]:
            raise ValueError(f"resume: the earlier results have {key} {earlier.get(key)!r}, "
                             f"this run has {fresh[key]!r}; resume with the same command")
    gpu = (fresh["environment"]["gpu"] or {}).get("name")
    before = ((earlier.get("environment") or {}).get("gpu") or {}).get("name")
    if gpu != before:
        raise ValueError(f"resume: the earlier results come from GPU {before!r}, this is "
                         f"{gpu!r}; start a new run instead")
    merged = dict(earlier)
    merged["rows"] = list(earlier["rows"])
    merged["resumed"] = [*earlier.get("resumed", []), fresh["environment"]]
    return merged


def run_suite(suite: Suite, settings: Settings, *, cases: Sequence[str] | None = None,
              ops: Sequence[str] | None = None, ceilings: bool = True,
              console: Console | None = None,
              on_case: Callable[[dict], None] | None = None,
              resume: dict | None = None) -> dict:
    """Run ``suite`` and return its results as plain JSON-ready data.

    Args:
        suite: what to run.
        settings: device, attnkit backend, quick, timing budget, seed.
        cases: keep only cases whose name contains one of these strings (None = all).
        ops: keep only these op names (the subject is always kept).
        ceilings: measure the bf16 matmul and copy ceilings first (CUDA only).
        console: where the progress bar and a line per finished row go (default: a new one).
        on_case: called with the results so far after each case (e.g. to save partial JSON).
        resume: results of an earlier, stopped run of the same suite and settings on the same
            GPU: its cases are kept and not run again, its ceilings are reused, and this run's
            environment is added under ``"resumed"``.

    Returns:
        ``{"suite", "description", "measure", "unit", "notes", "settings", "environment",
        "ceilings", "ops", "rows"}``; one row per (case, op).

    Raises:
        ValueError: ``ops`` names an op the suite does not have; ``resume`` comes from another
            suite, other settings, other ops or another GPU.
    """
    unknown = sorted(set(ops or ()) - {op.name for op in suite.ops})
    if unknown:
        raise ValueError(f"ops must be among {[op.name for op in suite.ops]}, got {unknown}")
    selected_ops = [op for op in suite.ops if op.subject or not ops or op.name in ops]
    selected_cases = _select(suite.cases(settings.quick), cases)
    console = console or Console()
    result = {
        "suite": suite.name, "description": suite.description, "measure": suite.measure,
        "unit": suite.unit, "notes": list(suite.notes),
        "settings": {"backend": settings.backend, "quick": settings.quick,
                     "warmup_ms": settings.warmup_ms, "rep_ms": settings.rep_ms,
                     "check_rows": settings.check_rows, "seed": settings.seed},
        "environment": environment(settings.device),
        "ceilings": {},
        "ops": [{"name": op.name, "subject": op.subject, "label": op.label}
                for op in selected_ops],
        "rows": [],
    }
    if resume is not None:
        result = _resumed(result, resume)
        done = {row["case"] for row in result["rows"]}
        selected_cases = [c for c in selected_cases if c.name not in done]
    elif ceilings:
        result["ceilings"] = measure_ceilings(settings.device)
    total = len(selected_cases) * len(selected_ops)
    progress = Progress(TextColumn("[bold]{task.fields[what]:<48}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                        transient=False, disable=total == 0)
    with progress:
        task = progress.add_task(suite.name, total=total, what=suite.name)
        for case in selected_cases:
            inputs, reason, _ = _attempt(
                lambda case=case: suite.make_inputs(case, settings.device, settings.seed))
            for op in selected_ops:
                progress.update(task, what=f"{case.name} / {op.name}")
                if reason is not None:
                    row = _new_row(suite, case, op)
                    row["status"], row["reason"] = "error", f"inputs: {reason}"
                else:
                    start = time.perf_counter()
                    row = _run_op(suite, case, op, inputs, settings)
                    _release(settings.device, inputs)
                    row["seconds"] = round(time.perf_counter() - start, 2)
                result["rows"].append(row)
                progress.console.print(row_line(row), highlight=False)
                progress.advance(task)
            inputs = None
            _release(settings.device, {}, collect=True)
            if on_case is not None:
                on_case(result)
    return result
