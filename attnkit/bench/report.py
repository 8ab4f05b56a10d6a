"""Turn a suite's results into tables: rates, ratios to every peer, the roofline, memory.

Every function here reads the plain results of ``harness.run_suite`` (or the same data loaded back
from ``--json``), so a saved run can be reported again. Cells read ``fwd / bwd``; ``n/a`` marks a
peer that cannot run the case (the reasons are listed under the tables), ``error`` a failure,
``WRONG`` attnkit failing its correctness check (not timed); ``(WRONG)`` after a peer's rates
marks a peer that failed its check (timed anyway, and listed under the tables).

Roofline of one pass: ``floor = max(FLOPs / matmul ceiling, minimum bytes / copy ceiling)``,
measured in the same run; ``% of roofline`` is ``floor / measured time``; ``bound`` says which
term is larger.

Example:
    >>> fmt_rate(412.345), fmt_rate(7.25), fmt_rate(None)
    ('412', '7.25', '-')
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

STATUS_CELL = {"unsupported": "n/a", "error": "error", "check_failed": "WRONG",
               "skipped": "skipped"}


def fmt_rate(value: float | None) -> str:
    """A rate with three significant digits (``-`` for none)."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(value: float | None) -> str:
    """``1.23x`` (``-`` for none)."""
    return "-" if value is None else f"{value:.2f}x"


def _by_case(result: dict) -> dict[str, dict[str, dict]]:
    """``case -> op -> row``, in run order."""
    table: dict[str, dict[str, dict]] = {}
    for row in result["rows"]:
        table.setdefault(row["case"], {})[row["op"]] = row
    return table


def _op_names(result: dict) -> tuple[str, list[str]]:
    subject = next(op["name"] for op in result["ops"] if op["subject"])
    return subject, [op["name"] for op in result["ops"] if not op["subject"]]


def _directions(result: dict) -> list[str]:
    row = result["rows"][0] if result["rows"] else {}
    return [d for d in ("fwd", "bwd") if f"{d}_ms" in row]


def _cell(row: dict | None, directions: list[str], key: str, fmt) -> str:
    if row is None:
        return "-"
    if row["status"] != "ok":
        return STATUS_CELL.get(row["status"], row["status"])
    parts = []
    for d in directions:
        value = row[f"{d}_{key}"]
        parts.append("error" if value is None and row.get(f"{d}_error") else fmt(value))
    flag = " (WRONG)" if row.get("check") and not row["check"]["ok"] else ""
    return " / ".join(parts) + flag


def rate_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each case's rate for every op, ``fwd / bwd``, and the check's verdict."""
    subject, peers = _op_names(result)
    directions = _directions(result)
    header = ["case", "check", subject, *peers]
    rows = []
    for case, ops in _by_case(result).items():
        mine = ops.get(subject)
        verdict = "-"
        if mine is not None and mine["check"] is not None:
            verdict = "ok" if mine["check"]["ok"] else "FAILED"
        rows.append([case, verdict, *[_cell(ops.get(name), directions, "rate", fmt_rate)
                                      for name in (subject, *peers)]])
    return header, rows


def ratio(subject_row: dict | None, peer_row: dict | None, direction: str) -> float | None:
    """How many times faster the subject ran than the peer (peer time / subject time)."""
    if not subject_row or not peer_row:
        return None
    mine, theirs = subject_row.get(f"{direction}_ms"), peer_row.get(f"{direction}_ms")
    if subject_row["status"] != "ok" or peer_row["status"] != "ok" or not mine or not theirs:
        return None
    return theirs / mine


def ratio_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the subject's speed-up over every peer, ``fwd / bwd`` (>1 = faster), and
    over the fastest peer that ran each pass."""
    subject, peers = _op_names(result)
    directions = _directions(result)
    header = ["case", *[f"{subject} / {name}" for name in peers], "vs best peer"]
    rows = []
    for case, ops in _by_case(result).items():
        cells = []
        for name in peers:
            values = [ratio(ops.get(subject), ops.get(name), d) for d in directions]
            if all(v is None for v in values) and ops.get(name, {}).get("status") != "ok":
                cells.append(STATUS_CELL.get(ops.get(name, {}).get("status"), "-"))
            else:
                cells.append(" / ".join(fmt_ratio(v) for v in values))
        best = []
        for d in directions:
            values = [v for name in peers
                      if (v := ratio(ops.get(subject), ops.get(name), d)) is not None]
            best.append(fmt_ratio(min(values)) if values else "-")
        rows.append([case, *cells, " / ".join(best)])
    return header, rows


def roofline(row: dict, direction: str, ceilings: dict) -> dict | None:
    """Floor time of one pass from the ceilings, and how close the measured time came.

    Returns:
        ``{"compute_ms", "memory_ms", "floor_ms", "bound", "measured_ms", "fraction"}`` or None
        when the ceilings were not measured.
    """
    matmul, copy = ceilings.get("bf16_matmul_TFLOPs"), ceilings.get("d2d_copy_TBps")
    if not matmul or not copy:
        return None
    compute_ms = row[f"{direction}_flops"] / (matmul * 1e12) * 1e3
    memory_ms = row[f"{direction}_bytes"] / (copy * 1e12) * 1e3
    floor = max(compute_ms, memory_ms)
    measured = row.get(f"{direction}_ms")
    return {"compute_ms": compute_ms, "memory_ms": memory_ms, "floor_ms": floor,
            "bound": "compute" if compute_ms >= memory_ms else "memory", "measured_ms": measured,
            "fraction": floor / measured if measured else None}


def roofline_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the subject's FLOPs, minimum bytes, floor and % of roofline per pass."""
    subject, _ = _op_names(result)
    header = ["case", "pass", "GFLOP", "min MB", "floor ms", "bound", "measured ms",
              "% of roofline"]
    rows = []
    for case, ops in _by_case(result).items():
        row = ops.get(subject)
        if row is None:
            continue
        for d in _directions(result):
            line = roofline(row, d, result["ceilings"])
            if line is None:
                continue
            measured = line["measured_ms"]
            rows.append([case, d, f"{row[f'{d}_flops'] / 1e9:.1f}",
                         f"{row[f'{d}_bytes'] / 1e6:.1f}", f"{line['floor_ms']:.3f}",
                         line["bound"], "-" if measured is None else f"{measured:.3f}",
                         "-" if line["fraction"] is None else f"{100 * line['fraction']:.0f}%"])
    return header, rows


def standing_lines(result: dict) -> list[str]:
    """Per peer: on how many passes the subject was at least as fast, and where it was behind."""
    subject, peers = _op_names(result)
    cases = _by_case(result)
    lines = []
    for name in peers:
        ahead, behind = 0, []
        for case, ops in cases.items():
            for d in _directions(result):
                value = ratio(ops.get(subject), ops.get(name), d)
                if value is None:
                    continue
                if value >= 1.0:
                    ahead += 1
                else:
                    behind.append(f"{case} {d} {fmt_ratio(value)}")
        total = ahead + len(behind)
        if total:
            tail = f"; behind on {', '.join(behind)}" if behind else ""
            lines.append(f"{subject} vs {name}: at least as fast on {ahead} of {total} "
                         f"passes{tail}")
    return lines


def baseline_lines(result: dict) -> list[str]:
    """For cases naming a ``baseline`` case: how many times faster the subject ran on them."""
    subject, _ = _op_names(result)
    cases = _by_case(result)
    lines = []
    for case, ops in cases.items():
        row = ops.get(subject)
        if not row or not row.get("baseline") or row["baseline"] not in cases:
            continue
        base = cases[row["baseline"]].get(subject)
        parts = [f"{fmt_ratio(ratio(row, base, d))} {d}" for d in _directions(result)]
        lines.append(f"{case}: {', '.join(parts)} faster than {row['baseline']} ({subject})")
    return lines


def memory_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: peak MiB above the inputs, ``fwd / fwd+bwd``, for every op."""
    subject, peers = _op_names(result)
    names = [subject, *peers]
    header = ["case", "inputs MiB", *names, f"{subject} fwd+bwd MiB per 1k tokens"]
    rows = []
    for case, ops in _by_case(result).items():
        inputs = next((r["inputs_mib"] for r in ops.values() if r.get("inputs_mib")), None)
        cells = []
        for name in names:
            row = ops.get(name)
            if row is None or row["status"] != "ok":
                cells.append("-" if row is None else STATUS_CELL.get(row["status"], "?"))
            else:
                cells.append(f"{row['fwd_peak_mib']:.0f} / {row['fwd_bwd_peak_mib']:.0f}")
        mine, per_k = ops.get(subject), "-"
        params = (mine or {}).get("params") or {}
        if mine and mine["status"] == "ok" and params.get("seq"):
            tokens = params["seq"] * params.get("batch", 1)
            per_k = f"{1024 * mine['fwd_bwd_peak_mib'] / tokens:.2f}"
        rows.append([case, "-" if inputs is None else f"{inputs:.0f}", *cells, per_k])
    return header, rows


def problem_lines(result: dict) -> list[str]:
    """Why rows did not run cleanly: one line per (op, status, reason), naming its cases."""
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for row in result["rows"]:
        if row["status"] != "ok":
            key = (row["op"], row["status"], str(row["reason"]))
            grouped.setdefault(key, []).append(row["case"])
        elif row.get("check") and not row["check"]["ok"]:
            errors = ", ".join(f"{k} {v['error']:.3g} > {v['bound']:.3g}"
                               for k, v in row["check"]["errors"].items()
                               if v["error"] > v["bound"]) or row["check"]["detail"]
            key = (row["op"], "failed the check (timed anyway)", errors)
            grouped.setdefault(key, []).append(row["case"])
        for d in ("fwd", "bwd"):
            if row.get(f"{d}_error"):
                key = (row["op"], f"{d} error", str(row[f"{d}_error"]))
                grouped.setdefault(key, []).append(row["case"])
    return [f"{op} {status} on {', '.join(cases)}: {reason}"
            for (op, status, reason), cases in grouped.items()]


def _rich(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def render(result: dict, console: Console | None = None) -> None:
    """Print every table of ``result`` and the reasons of rows that did not run."""
    console = console or Console()
    env = result["environment"]
    gpu = (env.get("gpu") or {}).get("name", env["device"])
    console.print(f"[bold]{result['suite']}[/bold] on {gpu}, torch {env['torch']}, triton "
                  f"{env['triton']}, {env['date']}; attnkit backend={result['settings']['backend']}")
    if result["ceilings"]:
        console.print("ceilings: " + ", ".join(f"{k} {v}" for k, v in result["ceilings"].items()))
    subject_rows = [r for r in result["rows"] if r["subject"] and r.get("detail")]
    served = sorted({r["detail"].split("; ")[0] for r in subject_rows})
    if served:
        console.print(f"attnkit served by: {', '.join(served)}")
    for r in subject_rows:  # the autotuner's picks, where the row has them
        if "; " in r["detail"]:
            console.print(f"  {r['case']}: {r['detail'].split('; ', 1)[1]}")
    if result["measure"] == "memory":
        console.print(_rich("peak memory above inputs, fwd / fwd+bwd", *memory_table(result)))
    else:
        console.print(_rich(f"{result['unit']}, fwd / bwd", *rate_table(result)))
        console.print(_rich("speed-up of attnkit over each peer, fwd / bwd (>1 = faster)",
                            *ratio_table(result)))
        header, rows = roofline_table(result)
        if rows:
            console.print(_rich("attnkit against the roofline of the measured ceilings",
                                header, rows))
        for line in [*standing_lines(result), *baseline_lines(result)]:
            console.print(line)
    for note in result.get("notes", []):
        console.print(f"note: {note}")
    for line in problem_lines(result):
        console.print(f"[dim]{line}[/dim]")


def write_json(result: dict, path: str | Path) -> Path:
    """Write ``result`` as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    return path
