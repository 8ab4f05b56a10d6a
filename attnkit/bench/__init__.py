"""``attnkit bench``: check, then time attnkit against every attention PyTorch ships.

Suites live in ``attnkit.bench.suites`` (``attnkit bench --list`` shows them and their shapes);
the harness (``attnkit.bench.harness``) checks attnkit against SDPA math in fp32, then times it
and each peer with CUDA events in one process; ``attnkit.bench.report`` prints TFLOP/s, ratios and
the roofline; ``--json`` saves the results with device, versions and date; ``--plot`` draws them.

Example (on a GPU)::

    attnkit bench --suite prefill --json benchmarks/results/prefill.json --plot prefill.png
    attnkit bench --suite memory --quick
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console

from attnkit.bench import registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``attnkit bench``."""
    parser.add_argument("--suite", default="prefill",
                        help="suite to run (see --list; default: prefill)")
    parser.add_argument("--list", action="store_true", help="list suites and their shapes, run nothing")
    parser.add_argument("--quick", action="store_true", help="fewer shapes (one of each kind)")
    parser.add_argument("--backend", default="auto", choices=["auto", "triton", "reference"],
                        help="attnkit backend to time (default: auto)")
    parser.add_argument("--device", default=None,
                        help="device (default: cuda if available, else cpu; timings need cuda)")
    parser.add_argument("--cases", action="append", default=None, metavar="TEXT",
                        help="only cases whose name contains TEXT (repeatable)")
    parser.add_argument("--ops", default=None,
                        help="comma-separated peers to run besides attnkit (default: all)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write results as JSON")
    parser.add_argument("--plot", default=None, metavar="PNG", help="draw a bar chart (matplotlib)")
    parser.add_argument("--report", default=None, metavar="JSON",
                        help="print (and --plot) saved results instead of running anything")
    parser.add_argument("--resume", default=None, metavar="JSON",
                        help="continue a stopped run: keep the cases in this earlier --json "
                             "output (same command, same GPU) and run only the others")
    parser.add_argument("--warmup-ms", type=float, default=200.0,
                        help="warm-up per timing (ms; long enough for the clocks to recover after a compile)")
    parser.add_argument("--rep-ms", type=float, default=100.0, help="measuring time per timing (ms)")
    parser.add_argument("--check-rows", type=int, default=256,
                        help="query rows compared by the correctness check (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--no-ceilings", action="store_true",
                        help="skip measuring the matmul/copy ceilings (no roofline)")


def settings_from_args(args: argparse.Namespace) -> registry.Settings:
    """The run's settings from parsed arguments.

    Raises:
        ValueError: a non-positive timing budget or check-rows.
    """
    for name in ("warmup_ms", "rep_ms"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.check_rows < 2:
        raise ValueError(f"--check-rows must be >= 2, got {args.check_rows}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return registry.Settings(device=device, backend=args.backend, quick=args.quick,
                             warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
                             check_rows=args.check_rows, seed=args.seed)


def _list(console: Console) -> None:
    for name in registry.names():
        suite = registry.get(name)
        console.print(f"[bold]{name}[/bold]: {suite.description}")
        console.print(f"  ops: {', '.join(op.name for op in suite.ops)}")
        for case in suite.cases(False):
            quick = " (quick)" if case in suite.cases(True) else ""
            console.print(f"  - {case.name}{quick}")
    for module, why in registry.broken().items():
        console.print(f"[red]suites/{module}.py failed to import: {why}[/red]")


def _plot(result: dict, path: str | None, console: Console) -> None:
    if not path:
        return
    if not result["rows"]:
        console.print("plot: nothing to plot (no rows)")
        return
    from attnkit.bench.plot import plot_result

    console.print(f"plot: {plot_result(result, path)}")


def run(args: argparse.Namespace) -> int:
    """Run ``attnkit bench``; exit status 1 when attnkit failed a correctness check or errored."""
    from attnkit.bench import harness, report

    console = Console()
    if not console.is_terminal:  # logs: wide enough for the tables
        console = Console(width=200)
    if args.list:
        _list(console)
        return 0
    if args.report:
        result = json.loads(Path(args.report).read_text())
        report.render(result, console)
        _plot(result, args.plot, console)
        return 0
    suite = registry.get(args.suite)
    settings = settings_from_args(args)
    if settings.device.type != "cuda":
        console.print(f"[yellow]note: running on {settings.device}: host-clock timings, no "
                      "peers, no roofline; use a CUDA device for real numbers[/yellow]")
    ops = [name.strip() for name in args.ops.split(",") if name.strip()] if args.ops else None
    save = (lambda partial: report.write_json(partial, args.json)) if args.json else None
    earlier = None
    if args.resume:
        earlier = json.loads(Path(args.resume).read_text())
        console.print(f"resuming {args.resume}: {len({r['case'] for r in earlier['rows']})} "
                      "cases already measured")
    result = harness.run_suite(suite, settings, cases=args.cases, ops=ops,
                               ceilings=not args.no_ceilings, console=console, on_case=save,
                               resume=earlier)
    report.render(result, console)
    if args.json:
        console.print(f"results: {report.write_json(result, args.json)}")
    _plot(result, args.plot, console)
    failed = [r for r in result["rows"] if r["subject"] and r["status"] in ("check_failed", "error")]
    return 1 if failed else 0


COMMAND = ("check attnkit, then time it against PyTorch's attention backends", add_arguments, run)
