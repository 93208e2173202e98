"""The exact bias as the completion length T grows: TIC stays exact."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.analysis.test_gradient_bias import TOL
from tic_grpo_cli.analysis import main as analyze


def test_length_sensitivity_keeps_tic_exact_at_every_length(tmp_path, capsys) -> None:
    args = ["--lengths", "2,3,5", "--seeds", "0,1", "--steps", "3", "--no-eos"]
    assert analyze(["length-sensitivity", *args, "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "length_sensitivity.json").read_text())
    assert [(r["length"], r["seed"]) for r in data["rows"]] == [
        (t, s) for t in (2, 3, 5) for s in (0, 1)
    ]
    for row in data["rows"]:
        assert row["err_tic"] < TOL  # the identity, whatever T
        assert row["drift"] > 1e-3 and row["err_no_is"] > 1e-3  # θ moved, no-IS is stale
        assert 0 < row["uncorrected"] < 1.5
    summary = {s["length"]: s for s in data["summary"]}
    mean = statistics.fmean(r["err_grpo"] for r in data["rows"] if r["length"] == 5)
    assert summary[5]["err_grpo"] == pytest.approx(mean)
    assert (tmp_path / "length_sensitivity.png").stat().st_size > 10_000
    assert "| 5 | 2 |" in capsys.readouterr().out


def test_length_sensitivity_rejects_an_enumeration_too_large(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        analyze(["length-sensitivity", "--lengths", "30"])
    assert exit_info.value.code == 2
    assert "--lengths [30]" in capsys.readouterr().err
