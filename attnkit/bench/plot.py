"""``--plot out.png``: a bar chart of a suite's results (matplotlib, imported only here).

Timed suites: one panel per pass (forward, backward), one group of bars per case, one bar per op,
height = the suite's rate (TFLOP/s or TB/s). Memory suite: panels for forward and forward+backward
peak MiB. Ops that could not run a case leave a gap.

Example:
    >>> plot_result(result, "prefill.png")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib, which is not installed: "
                           "`pip install matplotlib` (or drop --plot)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series(result: dict, key: str) -> tuple[list[str], dict[str, list[float | None]]]:
    """Cases in run order and, for each op, its value of ``key`` per case (None = missing)."""
    cases: list[str] = []
    values: dict[str, dict[str, float | None]] = {op["name"]: {} for op in result["ops"]}
    for row in result["rows"]:
        if row["case"] not in cases:
            cases.append(row["case"])
        ok = row["status"] == "ok"
        values.setdefault(row["op"], {})[row["case"]] = row.get(key) if ok else None
    return cases, {op: [by_case.get(c) for c in cases] for op, by_case in values.items()}


def plot_result(result: dict, path: str | Path) -> Path:
    """Draw ``result`` as grouped bars into the PNG ``path``; returns the path.

    Raises:
        RuntimeError: matplotlib is not installed (says how to get it).
        ValueError: ``result`` has no rows.
    """
    if not result["rows"]:
        raise ValueError(f"nothing to plot: the {result['suite']} results have no rows")
    plt = _pyplot()
    if result["measure"] == "memory":
        panels = [("fwd_peak_mib", "forward peak (MiB)"),
                  ("fwd_bwd_peak_mib", "forward+backward peak (MiB)")]
    else:
        panels = [(f"{d}_rate", f"{name} ({result['unit']})")
                  for d, name in (("fwd", "forward"), ("bwd", "backward"))
                  if any(f"{d}_rate" in r for r in result["rows"])]
    cases, _ = series(result, panels[0][0])
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 1.1 * len(cases) + 3),
                                                      4 * len(panels)), squeeze=False)
    for ax, (key, title) in zip(axes[:, 0], panels):
        _, per_op = series(result, key)
        width = 0.8 / max(1, len(per_op))
        for i, (op, values) in enumerate(per_op.items()):
            xs = [c + (i - (len(per_op) - 1) / 2) * width for c in range(len(cases))]
            ax.bar(xs, [0 if v is None else v for v in values], width, label=op)
        ax.set_title(title)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    env = result["environment"]
    gpu = (env.get("gpu") or {}).get("name", env["device"])
    fig.suptitle(f"attnkit bench {result['suite']}: {gpu}, torch {env['torch']}, {env['date']}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
