"""The attnkit command line: info and demo run and print what they promise."""

from __future__ import annotations

import pytest

from attnkit import cli


def test_info_prints_versions_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("attnkit", "torch", "triton", "reference", "backend"):
        assert word in out


def test_info_on_cpu_explains_why_triton_cannot_run(capsys):
    assert cli.main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "yes" in out  # the reference runs everywhere
    assert "no" in out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["nonsense"])


def test_demo_runs_and_prints_the_table(capsys):
    assert cli.main(["demo", "--device", "cpu", "--seq", "32"]) == 0
    out = capsys.readouterr().out
    assert "attnkit demo" in out
