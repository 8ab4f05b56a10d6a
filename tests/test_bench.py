"""The benchmark harness on the CPU: registry, FLOP formulas, the check, the harness end to end
on the reference backend, report and JSON formatting, the plot and the CLI."""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings

import pytest
import torch
from rich.console import Console

from attnkit import cli
from attnkit.bench import add_arguments, registry, report, settings_from_args
from attnkit.bench.cases import AttentionCase, make_inputs, random_doc_lengths, visibility
from attnkit.bench.check import check_attention, sample_rows
from attnkit.bench.flops import attention_bytes, attention_flops, attention_work
from attnkit.bench.harness import explain, run_suite
from attnkit.bench.peers import PEERS, flex_mask_mod
from attnkit.bench.subject import ATTNKIT
from attnkit.bench.suites import memory, prefill

CPU = torch.device("cpu")


def _case(**kw) -> AttentionCase:
    base = dict(name="c", batch=1, seq=64, heads_q=2, heads_kv=2, head_dim=16, dtype="float32")
    base.update(kw)
    return AttentionCase(**base)


def _settings(**kw) -> registry.Settings:
    base = dict(device=CPU, backend="reference", rep_ms=2.0, check_rows=48)
    base.update(kw)
    return registry.Settings(**base)


# --- registry -------------------------------------------------------------------------------

def test_registry_discovers_suites():
    assert {"prefill", "memory"} <= set(registry.names())
    assert registry.get("prefill") is prefill.SUITE
    assert registry.get("memory").measure == "memory"


def test_registry_unknown_suite_names_the_known_ones():
    with pytest.raises(ValueError, match=r"suite must be one of \[.*'prefill'.*\], got 'nope'"):
        registry.get("nope")


def test_register_rejects_non_suites():
    with pytest.raises(TypeError, match=r"suite must be an attnkit.bench.registry.Suite, got dict"):
        registry.register({})


@pytest.mark.parametrize("change, message", [
    (dict(ops=[ATTNKIT, ATTNKIT]), r"exactly one subject op"),
    (dict(ops=list(PEERS)), r"exactly one subject op, got \[\]"),
    (dict(ops=[ATTNKIT, PEERS[0], PEERS[0]]), r"duplicate op names"),
    (dict(measure="speed"), r"measure must be one of \['time', 'memory'\], got 'speed'"),
    (dict(unit="GB/s"), r"unit must be one of .*got 'GB/s'"),
    (dict(directions=("sideways",)), r"directions must be a non-empty subset"),
])
def test_suite_validation(change, message):
    fields = dict(name="x", description="", cases=lambda quick: [], ops=[ATTNKIT, *PEERS],
                  make_inputs=make_inputs, check=None, work=lambda c, d: None)
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        registry.Suite(**fields)


def test_prefill_shapes():
    cases = prefill.cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)) == 18
    assert all(c.tokens == 16384 for c in cases)
    mha = [c for c in cases if c.name.startswith("mha")]
    assert sorted({(c.head_dim, c.seq, c.causal) for c in mha}) == sorted(
        (d, s, causal) for d in (64, 128) for s in (1024, 4096, 16384) for causal in (False, True))
    assert all(c.heads_q == 2048 // c.head_dim == c.heads_kv for c in mha)
    assert {(c.heads_q, c.heads_kv) for c in cases if c.name.startswith("gqa")} == {(32, 8)}
    varlen = next(c for c in cases if c.packed)
    assert varlen.causal and sum(varlen.doc_lengths) == 16384 and len(varlen.doc_lengths) > 1
    window = next(c for c in cases if c.window != (-1, -1))
    assert window.window == (1023, 0) and window.causal and window.baseline in names
    assert {(c.head_dim, c.dv) for c in cases if c.name.startswith("mla")} == {(192, 128)}
    quick = prefill.cases(quick=True)
    assert set(quick) < set(cases) and window in quick and window.baseline in [c.name for c in quick]


def test_memory_shapes():
    assert [c.seq for c in memory.cases()] == [8192, 16384, 32768, 65536, 131072]
    assert [c.seq for c in memory.cases(quick=True)] == [8192, 16384]
    assert all(c.causal and c.head_dim == 128 and c.heads_q == 16 and c.batch == 1
               for c in memory.cases())


# --- FLOPs and bytes ------------------------------------------------------------------------

def test_forward_flops_dense():
    case = _case(batch=3, seq=100, heads_q=4, heads_kv=2, head_dim=32)
    assert attention_flops(case, "fwd") == 4 * 3 * 4 * 100 * 100 * 32


def test_causal_halves_and_backward_is_two_and_a_half():
    full, causal = _case(seq=128), _case(seq=128, causal=True)
    assert attention_flops(causal, "fwd") == attention_flops(full, "fwd") / 2
    assert attention_flops(causal, "bwd") == 2.5 * attention_flops(causal, "fwd")


@pytest.mark.parametrize("causal, window", [(True, (7, 0)), (False, (5, 3)), (True, (9, 2)),
                                            (False, (-1, 4))])
def test_window_flops_count_the_visible_area(causal, window):
    case = _case(seq=50, causal=causal, window=window, head_dim=8)
    area = int(visibility(case, torch.arange(50), CPU).sum())
    assert case.visible_pairs() == area
    assert attention_flops(case, "fwd") == 4 * case.heads_q * area * 8


def test_packed_flops_sum_documents_and_dv_counts_separately():
    case = _case(seq=30, causal=False, doc_lengths=(10, 0, 20), head_dim=8, head_dim_v=16)
    assert case.visible_pairs() == 10 * 10 + 20 * 20
    assert attention_flops(case, "fwd") == 2 * 500 * case.heads_q * (8 + 16)


def test_minimum_bytes():
    case = _case(batch=2, seq=10, heads_q=4, heads_kv=2, head_dim=8, dtype="bfloat16")
    q, kv, lse = 2 * 10 * 4 * 8, 2 * 10 * 2 * 8, 4 * 2 * 10 * 4
    assert attention_bytes(case, "fwd") == 2 * (q + 2 * kv + q) + lse
    assert attention_bytes(case, "bwd") == 2 * (2 * (q + 2 * kv) + 2 * q) + lse


def test_flops_reject_unknown_direction():
    with pytest.raises(ValueError, match=r"direction must be 'fwd' or 'bwd', got 'up'"):
        attention_flops(_case(), "up")


def test_random_doc_lengths():
    lengths = random_doc_lengths(5000, low=100, high=900, seed=3)
    assert sum(lengths) == 5000 and all(100 <= n <= 900 for n in lengths[:-1])
    assert lengths == random_doc_lengths(5000, low=100, high=900, seed=3)


def test_case_validation():
    with pytest.raises(ValueError, match=r"heads_q \(6\) must be a multiple of heads_kv \(4\)"):
        _case(heads_q=6, heads_kv=4)
    with pytest.raises(ValueError, match=r"doc_lengths summing to seq \(64\), got batch 1 and sum 9"):
        _case(doc_lengths=(4, 5))
    with pytest.raises(ValueError, match=r"dtype must be one of .*got 'int8'"):
        _case(dtype="int8")


def test_flex_mask_mod_matches_visibility():
    case = _case(seq=40, causal=True, window=(5, 0), doc_lengths=(15, 25))
    inputs = make_inputs(case, CPU, 0)
    rows, zero = torch.arange(40), torch.tensor(0)
    mod = flex_mask_mod(case, inputs["doc_ids"])
    assert torch.equal(mod(zero, zero, rows[:, None], rows[None, :]), visibility(case, rows, CPU))
    assert flex_mask_mod(_case(), None) is None


# --- correctness check ----------------------------------------------------------------------

def test_sample_rows():
    assert torch.equal(sample_rows(10, 16, 0), torch.arange(10))
    rows = sample_rows(1000, 16, 0)
    assert rows.numel() == 16 and rows[0] == 0 and rows[-1] == 999
    assert torch.equal(rows, rows.unique())


@pytest.mark.parametrize("case", [
    _case(name="gqa causal", batch=2, seq=37, heads_q=4, heads_kv=2, causal=True),
    _case(name="packed dv", seq=50, heads_kv=1, head_dim_v=8, causal=True, doc_lengths=(20, 30)),
    _case(name="window", seq=70, causal=True, window=(9, 0)),
], ids=lambda c: c.name)
def test_check_passes_the_reference(case):
    inputs = make_inputs(case, CPU, 0)
    forward = ATTNKIT.build(case, inputs, _settings())
    result = check_attention(case, inputs, forward, _settings(check_rows=16))
    assert result.ok, result.errors
    assert set(result.errors) == {"out", "dq"}  # sampled rows: dk/dv need every row
    full = check_attention(case, inputs, forward, _settings(check_rows=1000))
    assert full.ok and set(full.errors) == {"out", "dq", "dk", "dv"}


def test_check_fails_a_wrong_result():
    case = _case(seq=40, causal=True)
    inputs = make_inputs(case, CPU, 0)
    wrong = ATTNKIT.build(_case(seq=40, causal=False), inputs, _settings())  # ignores the mask
    result = check_attention(case, inputs, wrong, _settings())
    assert not result.ok and result.errors["out"][0] > result.errors["out"][1]


# --- harness end to end ---------------------------------------------------------------------

def _tiny_suite(ops=None, cases=None) -> registry.Suite:
    docs = random_doc_lengths(60, low=10, high=30, seed=0)
    default = [_case(name="tiny gqa", batch=2, seq=33, heads_q=4, heads_kv=2, causal=True),
               _case(name="tiny window", seq=48, causal=True, window=(7, 0), baseline="tiny gqa"),
               _case(name="tiny varlen", seq=60, causal=True, doc_lengths=docs)]
    return registry.Suite(name="tiny", description="tiny shapes", cases=lambda quick: cases or default,
                          ops=ops or [ATTNKIT, *PEERS], make_inputs=make_inputs,
                          check=check_attention, work=attention_work)


def test_harness_runs_attnkit_and_reports_peers_it_cannot_run(tmp_path):
    result = run_suite(_tiny_suite(), _settings(), ceilings=False)
    rows = result["rows"]
    assert len(rows) == 3 * 5
    mine = [r for r in rows if r["subject"]]
    for row in mine:
        assert row["status"] == "ok" and row["check"]["ok"], row
        assert row["detail"] == "backend reference"
        assert row["fwd_ms"] > 0 and row["bwd_ms"] > 0 and row["fwd_rate"] > 0
        assert row["fwd_rate"] == pytest.approx(row["fwd_flops"] / (row["fwd_ms"] * 1e9))
    for row in rows:
        if not row["subject"]:
            assert row["status"] == "unsupported" and "CUDA" in row["reason"]
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["date"] and "triton" in env
    path = report.write_json(result, tmp_path / "out" / "tiny.json")
    assert json.loads(path.read_text())["rows"][0]["case"] == "tiny gqa"


@pytest.mark.skipif(__import__("os").environ.get("TRITON_INTERPRET") != "1",
                    reason="the Triton kernels on the CPU need TRITON_INTERPRET=1")
def test_subject_rows_name_the_autotuned_tiles():
    """A row served by the Triton kernels ends with the tiles each kernel ran; the report
    lists them under the backend line."""
    pytest.importorskip("triton")
    result = run_suite(_tiny_suite(ops=[ATTNKIT], cases=[_case(seq=20, causal=True)]),
                       _settings(backend="triton", rep_ms=1.0), ceilings=False)
    (row,) = result["rows"]
    assert row["status"] == "ok", row
    backend, tiles = row["detail"].split("; ")
    assert backend == "backend triton"
    assert tiles.startswith("tiles fwd 16x16 w4 s1, dkdv 16x16 w4 s1"), tiles
    console = Console(record=True, width=200)
    report.render(result, console=console)
    assert "  c: tiles fwd 16x16 w4 s1" in console.export_text()


def test_subject_rows_name_a_gluon_kernel_that_served(monkeypatch):
    """A Gluon kernel launched during the case (its module's ``calls`` went up) is named with
    its tiling in place of the Triton kernel's autotuned tiles; one that did not run is not."""
    import sys
    import types

    pytest.importorskip("triton")
    from attnkit.bench import subject
    from attnkit.kernels import flash_bwd  # noqa: F401  (the rows read its kernels)

    fwd = types.SimpleNamespace(calls=3, tiling="128x128 s2 wg2 persistent")
    dkdv = types.SimpleNamespace(calls=5, tiling="64x128 s2 wg2")
    dq = types.SimpleNamespace(calls=0, tiling="128x64 s2 wg2")
    monkeypatch.setitem(sys.modules, "attnkit.kernels.flash_fwd_gluon", fwd)
    monkeypatch.setitem(sys.modules, "attnkit.kernels.flash_bwd_gluon", dkdv)
    monkeypatch.setitem(sys.modules, "attnkit.kernels.flash_dq_gluon", dq)
    before = subject._gluon_calls()
    assert before == {"fwd": 3, "dkdv": 5, "dq": 0}
    fwd.calls += 1
    dq.calls += 1
    tiles = subject._tiles("triton", before)
    assert "fwd gluon 128x128 s2 wg2 persistent" in tiles and "dkdv gluon" not in tiles, tiles
    assert "dq gluon 128x64 s2 wg2" in tiles, tiles
    assert subject._tiles("reference", before) == ""


def test_harness_marks_a_failed_check_and_skips_its_timing():
    def wrong_build(case, inputs, settings):
        return lambda: ATTNKIT.build(case, inputs, settings)() * 1.5

    wrong = registry.Op(name="attnkit", build=wrong_build, subject=True)
    result = run_suite(_tiny_suite(ops=[wrong], cases=[_case(seq=20)]), _settings(),
                       ceilings=False)
    (row,) = result["rows"]
    assert row["status"] == "check_failed" and "not timed" in row["reason"]
    assert row["fwd_ms"] is None and row["bwd_ms"] is None


def test_harness_checks_peers_when_the_suite_asks():
    def twin(case, inputs, settings):  # a correct peer: attnkit's reference under another name
        return ATTNKIT.build(case, inputs, settings)

    def wrong(case, inputs, settings):  # a peer set up with the wrong mask
        return ATTNKIT.build(dataclasses.replace(case, causal=False), inputs, settings)

    ops = [ATTNKIT, registry.Op(name="twin", build=twin), registry.Op(name="wrong", build=wrong)]
    suite = dataclasses.replace(_tiny_suite(ops=ops, cases=[_case(seq=20, causal=True)]),
                                check_peers=True)
    by_op = {r["op"]: r for r in run_suite(suite, _settings(), ceilings=False)["rows"]}
    assert by_op["twin"]["status"] == "ok" and by_op["twin"]["check"]["ok"]
    assert by_op["twin"]["fwd_ms"] > 0
    assert by_op["wrong"]["status"] == "ok" and not by_op["wrong"]["check"]["ok"]
    assert by_op["wrong"]["fwd_ms"] > 0  # timed anyway, and flagged
    assert registry.get("prefill").check_peers and registry.get("memory").check_peers
    result = {"rows": list(by_op.values()), "ops": [{"name": n, "subject": n == "attnkit"}
                                                    for n in by_op], "unit": "TFLOP/s"}
    assert report.rate_table(result)[1][0][4].endswith(" (WRONG)")
    (line,) = report.problem_lines(result)
    assert line.startswith("wrong failed the check (timed anyway) on c: out ")


def test_harness_records_a_peer_failure_with_torchs_reasons():
    def refusing(case, inputs, settings):
        def forward():
            warnings.warn("Flash attention kernel not used because:", stacklevel=2)
            warnings.warn("Flash attention requires q,k,v to have the same last dimension "
                          "(Triggered internally at sdp_utils.cpp:21.)", stacklevel=2)
            raise RuntimeError("No available kernel.  Aborting execution.")
        return forward

    def crashing(case, inputs, settings):
        raise KeyError("boom")

    ops = [ATTNKIT, registry.Op(name="refuses", build=refusing),
           registry.Op(name="crashes", build=crashing)]
    result = run_suite(_tiny_suite(ops=ops, cases=[_case(seq=20)]), _settings(), ceilings=False)
    by_op = {r["op"]: r for r in result["rows"]}
    assert by_op["refuses"]["status"] == "unsupported"
    assert by_op["refuses"]["reason"] == ("Flash attention requires q,k,v to have the same last "
                                          "dimension")
    assert by_op["crashes"]["status"] == "error" and "boom" in by_op["crashes"]["reason"]
    assert by_op["attnkit"]["status"] == "ok"


def test_harness_rejects_unknown_ops_and_filters_cases():
    with pytest.raises(ValueError, match=r"ops must be among \[.*\], got \['nope'\]"):
        run_suite(_tiny_suite(), _settings(), ops=["nope"], ceilings=False)
    result = run_suite(_tiny_suite(), _settings(), cases=["window"], ops=["flex"],
                       ceilings=False)
    assert [(r["case"], r["op"]) for r in result["rows"]] == [("tiny window", "attnkit"),
                                                              ("tiny window", "flex")]


def test_memory_suite_on_cpu_checks_then_skips_measuring():
    suite = registry.get("memory")
    tiny = registry.Suite(name="m", description="", cases=lambda quick: [_case(seq=24, causal=True)],
                          ops=[ATTNKIT], make_inputs=suite.make_inputs, check=suite.check,
                          work=suite.work, measure="memory")
    (row,) = run_suite(tiny, _settings(), ceilings=False)["rows"]
    assert row["check"]["ok"] and row["status"] == "skipped" and "CUDA only" in row["reason"]


def test_explain_out_of_memory_and_plain_errors():
    assert explain(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried 2 GiB")).startswith(
        "out of memory: CUDA out of memory")
    assert explain(ValueError("bad shape\nmore")) == "bad shape"


# --- report ---------------------------------------------------------------------------------

def _row(case, op, subject, fwd_ms, bwd_ms, status="ok", baseline=None, reason=None):
    flops = 1e12
    return {"case": case, "op": op, "subject": subject, "status": status, "reason": reason,
            "baseline": baseline, "detail": "backend triton" if subject else "",
            "check": {"ok": True} if subject else None,
            "fwd_flops": flops, "fwd_bytes": 1e9, "fwd_ms": fwd_ms, "fwd_error": None,
            "fwd_rate": None if fwd_ms is None else flops / fwd_ms / 1e9,
            "bwd_flops": 2.5 * flops, "bwd_bytes": 2e9, "bwd_ms": bwd_ms, "bwd_error": None,
            "bwd_rate": None if bwd_ms is None else 2.5 * flops / bwd_ms / 1e9}


def _result(rows, ceilings=None):
    return {"suite": "prefill", "measure": "time", "unit": "TFLOP/s", "notes": [],
            "settings": {"backend": "auto"}, "ceilings": ceilings or {},
            "environment": {"device": "cuda", "gpu": {"name": "GPU"}, "torch": "2", "triton": "3",
                            "date": "today"},
            "ops": [{"name": "attnkit", "subject": True}, {"name": "flash", "subject": False},
                    {"name": "cudnn", "subject": False}],
            "rows": rows}


def test_rate_and_ratio_tables():
    result = _result([_row("a", "attnkit", True, 2.0, 5.0), _row("a", "flash", False, 4.0, 5.0),
                      _row("a", "cudnn", False, None, None, "unsupported", reason="no")])
    header, rows = report.rate_table(result)
    assert header == ["case", "check", "attnkit", "flash", "cudnn"]
    assert rows == [["a", "ok", "500 / 500", "250 / 500", "n/a"]]
    header, rows = report.ratio_table(result)
    assert header == ["case", "attnkit / flash", "attnkit / cudnn", "vs best peer"]
    assert rows == [["a", "2.00x / 1.00x", "n/a", "2.00x / 1.00x"]]
    assert report.problem_lines(result) == ["cudnn unsupported on a: no"]
    result["rows"][2] = _row("a", "cudnn", False, 1.0, 10.0)
    assert report.ratio_table(result)[1] == [["a", "2.00x / 1.00x", "0.50x / 2.00x",
                                              "0.50x / 1.00x"]]
    assert report.standing_lines(result) == [
        "attnkit vs flash: at least as fast on 2 of 2 passes",
        "attnkit vs cudnn: at least as fast on 1 of 2 passes; behind on a fwd 0.50x"]


def test_roofline_and_baseline():
    result = _result([_row("full", "attnkit", True, 4.0, 10.0),
                      _row("win", "attnkit", True, 0.5, 2.0, baseline="full")],
                     ceilings={"bf16_matmul_TFLOPs": 500.0, "d2d_copy_TBps": 2.0})
    line = report.roofline(result["rows"][0], "fwd", result["ceilings"])
    assert line["compute_ms"] == pytest.approx(2.0) and line["memory_ms"] == pytest.approx(0.5)
    assert line["bound"] == "compute" and line["fraction"] == pytest.approx(0.5)
    header, rows = report.roofline_table(result)
    assert rows[0] == ["full", "fwd", "1000.0", "1000.0", "2.000", "compute", "4.000", "50%"]
    assert report.baseline_lines(result) == ["win: 8.00x fwd, 5.00x bwd faster than full (attnkit)"]
    assert report.roofline(result["rows"][0], "fwd", {}) is None


def test_memory_table():
    row = dict(_row("s8k", "attnkit", True, None, None), inputs_mib=40.0, fwd_peak_mib=10.4,
               fwd_bwd_peak_mib=50.6, params={"seq": 8192, "batch": 1})
    peer = dict(_row("s8k", "flash", False, None, None, "error", reason="out of memory"),
                inputs_mib=None)
    result = dict(_result([row, peer]), measure="memory")
    assert report.memory_table(result) == (
        ["case", "inputs MiB", "attnkit", "flash", "cudnn", "attnkit fwd+bwd MiB per 1k tokens"],
        [["s8k", "40", "10 / 51", "error", "-", "6.33"]])


def test_render_prints_every_table(capsys):
    from rich.console import Console

    result = _result([_row("a", "attnkit", True, 2.0, 5.0), _row("a", "flash", False, 4.0, 5.0)],
                     ceilings={"bf16_matmul_TFLOPs": 700.0, "d2d_copy_TBps": 3.0})
    report.render(result, Console(width=200, force_terminal=False))
    out = capsys.readouterr().out
    for text in ("TFLOP/s, fwd / bwd", "speed-up of attnkit", "roofline", "backend triton",
                 "2.00x / 1.00x"):
        assert text in out


def test_plot_writes_a_png(tmp_path):
    from attnkit.bench.plot import plot_result

    result = _result([_row("a", "attnkit", True, 2.0, 5.0), _row("a", "flash", False, 4.0, 5.0),
                      _row("a", "cudnn", False, None, None, "unsupported")])
    path = plot_result(result, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_memory_suite(tmp_path):
    from attnkit.bench.plot import plot_result

    row = dict(_row("s8k", "attnkit", True, None, None), inputs_mib=40.0, fwd_peak_mib=10.0,
               fwd_bwd_peak_mib=50.0)
    result = dict(_result([row]), measure="memory")
    assert plot_result(result, tmp_path / "m.png").stat().st_size > 0


def test_plot_refuses_empty_results(tmp_path):
    from attnkit.bench.plot import plot_result

    with pytest.raises(ValueError, match=r"nothing to plot: the prefill results have no rows"):
        plot_result(_result([]), tmp_path / "p.png")


def test_plot_without_matplotlib_says_how_to_get_it(monkeypatch, tmp_path):
    import sys

    from attnkit.bench.plot import plot_result

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match=r"--plot needs matplotlib.*pip install matplotlib"):
        plot_result(_result([_row("a", "attnkit", True, 2.0, 5.0)]), tmp_path / "p.png")


# --- CLI ------------------------------------------------------------------------------------

def _parse(*argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_parsing_and_settings():
    args = _parse("--suite", "memory", "--quick", "--backend", "reference", "--device", "cpu",
                  "--cases", "s8k", "--cases", "s16k", "--rep-ms", "5")
    assert (args.suite, args.quick, args.cases, args.ops) == ("memory", True, ["s8k", "s16k"], None)
    settings = settings_from_args(args)
    assert settings.device == CPU and settings.backend == "reference" and settings.rep_ms == 5
    with pytest.raises(ValueError, match=r"--rep-ms must be > 0, got 0.0"):
        settings_from_args(_parse("--rep-ms", "0"))
    with pytest.raises(ValueError, match=r"--check-rows must be >= 2, got 1"):
        settings_from_args(_parse("--check-rows", "1"))
    with pytest.raises(SystemExit):
        _parse("--backend", "cuda")


def test_cli_list(capsys):
    assert cli.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "prefill" in out and "memory" in out and "mha d128 s4k causal (quick)" in out


def test_cli_run_writes_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    code = cli.main(["bench", "--suite", "prefill", "--device", "cpu", "--cases", "no such case",
                     "--ops", "sdpa-flash,flex", "--json", str(path), "--no-ceilings"])
    assert code == 0
    saved = json.loads(path.read_text())
    assert saved["suite"] == "prefill" and saved["rows"] == []
    assert [op["name"] for op in saved["ops"]] == ["attnkit", "sdpa-flash", "flex"]
    assert set(saved["environment"]) >= {"gpu", "torch", "triton", "date"}
    again = tmp_path / "again.json"
    assert cli.main(["bench", "--suite", "prefill", "--device", "cpu", "--cases", "no such case",
                     "--ops", "sdpa-flash,flex", "--json", str(again), "--no-ceilings",
                     "--resume", str(path)]) == 0
    assert "resuming" in capsys.readouterr().out
    assert len(json.loads(again.read_text())["resumed"]) == 1
    assert cli.main(["bench", "--report", str(again), "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "prefill on cpu" in out and "nothing to plot (no rows)" in out


def test_a_broken_suite_module_is_reported_not_fatal(monkeypatch):
    monkeypatch.setattr(registry, "_BROKEN", {"decode": "ImportError: no decode op"})
    assert registry.broken() == {"decode": "ImportError: no decode op"}
    with pytest.raises(ValueError, match=r"got 'missing'; module suites/decode.py failed to "
                                         r"import \(ImportError: no decode op\)"):
        registry.get("missing")


def test_resume_keeps_measured_cases_and_runs_the_rest():
    suite = _tiny_suite(ops=[ATTNKIT])
    first = run_suite(suite, _settings(), cases=["tiny gqa"], ceilings=False)
    assert [r["case"] for r in first["rows"]] == ["tiny gqa"]
    second = run_suite(suite, _settings(), ceilings=False, resume=json.loads(json.dumps(first)))
    assert [r["case"] for r in second["rows"]] == ["tiny gqa", "tiny window", "tiny varlen"]
    assert second["rows"][0] == first["rows"][0] and len(second["resumed"]) == 1
    with pytest.raises(ValueError, match=r"resume: the earlier results have settings .* this run"):
        run_suite(suite, _settings(seed=5), ceilings=False, resume=first)
    other_gpu = dict(first, environment=dict(first["environment"], gpu={"name": "H200"}))
    with pytest.raises(ValueError, match=r"come from GPU 'H200', this is None"):
        run_suite(suite, _settings(), ceilings=False, resume=other_gpu)


def test_serving_backend_names_the_backend_and_survives_dispatcher_changes(monkeypatch):
    import importlib

    from attnkit.bench import subject

    attention_module = importlib.import_module("attnkit.ops.attention")

    q = torch.randn(1, 4, 2, 8)
    assert subject.serving_backend(q, q, q, {"causal": True, "backend": "reference"}) == "reference"
    with pytest.raises(registry.Unsupported, match=r"window must be a \(left, right\) pair"):
        subject.serving_backend(q, q, q, {"window": (1,), "backend": "reference"})
    monkeypatch.setattr(attention_module, "_validate", lambda *a, **k: (_ for _ in ()).throw(
        TypeError("unexpected keyword")))
    assert subject.serving_backend(q, q, q, {"backend": "auto"}) == (
        "auto (which one is unknown: TypeError)")


def test_a_check_that_cannot_run_stops_attnkit_but_not_the_peers():
    def broken_check(case, inputs, run, settings):
        raise RuntimeError("truth out of memory")

    twin = registry.Op(name="twin", build=ATTNKIT.build)
    suite = dataclasses.replace(_tiny_suite(ops=[ATTNKIT, twin], cases=[_case(seq=16)]),
                                check=broken_check, check_peers=True)
    mine, peer = run_suite(suite, _settings(), ceilings=False)["rows"]
    assert mine["status"] == "error" and mine["fwd_ms"] is None
    assert mine["reason"] == "the check failed to run: truth out of memory"
    assert peer["status"] == "ok" and not peer["check"]["ok"] and peer["fwd_ms"] > 0


def test_probe_jobs_keep_the_cases_named_in_probe_cases(tmp_path, monkeypatch):
    """``benchmarks/gluon_common.run_jobs``: ``PROBE_CASES`` keeps only the jobs it names,
    in their order, writes them to the JSON, and rejects a name that is not a job."""
    import json

    from benchmarks.gluon_common import run_jobs
    jobs = [("a", lambda x: x + 1, (1,)), ("b", lambda x: x * 3, (2,)), ("c", lambda: 0, ())]
    out = tmp_path / "probe.json"
    monkeypatch.setenv("PROBE_CASES", "c,b")
    assert list(run_jobs(jobs, str(out))) == ["b", "c"]
    assert json.loads(out.read_text()) == {"b": 6, "c": 0}
    monkeypatch.setenv("PROBE_CASES", "b,d")
    with pytest.raises(ValueError, match="PROBE_CASES.*'d'"):
        run_jobs(jobs, str(out))
    monkeypatch.delenv("PROBE_CASES")
    assert run_jobs(jobs, str(out)) == {"a": 2, "b": 6, "c": 0}


def test_serving_backward_patches_the_rule_and_launcher_and_restores_them():
    """``benchmarks/gluon_common.serving_backward``: under a config the rule takes every
    plain input and the launcher gets the config's options it names; under ``None`` the
    rule takes nothing; both come back after, also when the body raises."""
    import types

    from attnkit.kernels import flash_bwd
    from benchmarks.gluon_common import serving_backward

    def launcher(*args, **kwargs):
        return kwargs

    module = types.SimpleNamespace(launch=launcher)
    rule = flash_bwd._gluon_dq
    serve = functools.partial(serving_backward, module=module, launcher="launch",
                              rule="_gluon_dq", options=("block_n", "stages"))
    with serve({"block_n": 64, "block_m": 128}):
        assert flash_bwd._gluon_dq(None, None, None, None, plain=True, seq=1, causal=False)
        assert not flash_bwd._gluon_dq(None, None, None, None, plain=False, seq=1,
                                       causal=False)
        assert module.launch() == {"block_n": 64}
    with serve(None):
        assert not flash_bwd._gluon_dq(None, None, None, None, plain=True, seq=1,
                                       causal=False)
        assert module.launch is launcher
    with pytest.raises(RuntimeError), serve({"stages": 3}):
        raise RuntimeError
    assert flash_bwd._gluon_dq is rule and module.launch is launcher
