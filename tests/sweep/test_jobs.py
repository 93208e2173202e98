"""A sweep's job dirs: the failure and summary markers, and grouping jobs by config."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tic_grpo_cli.sweep.jobs import Job, finished_summary, group_jobs, record_failure


def test_failure_marker_and_finished_summary(tmp_path):
    assert finished_summary(tmp_path) is None
    try:
        raise ValueError("bad reward")
    except ValueError as err:
        record_failure(tmp_path / "job", err)
    record = json.loads((tmp_path / "job" / "error.json").read_text())
    assert record["error"] == "bad reward" and record["type"] == "ValueError"
    assert "Traceback" in record["traceback"] and "bad reward" in record["traceback"]
    assert finished_summary(tmp_path / "job") is None

    # A successful re-run writes summary.json after error.json: the job counts as finished,
    # and a later failure makes it unfinished again (the newer marker wins).
    (tmp_path / "job" / "summary.json").write_text('{"final/eval_accuracy": 0.5}')
    os.utime(tmp_path / "job" / "error.json", ns=(1, 1))
    assert finished_summary(tmp_path / "job") == {"final/eval_accuracy": 0.5}
    os.utime(tmp_path / "job" / "summary.json", ns=(0, 0))
    assert finished_summary(tmp_path / "job") is None


def test_common_overrides_leave_out_an_algorithm_the_jobs_replaced():
    """The chain study pins algorithm=tic and each +arm sets its own: the summary's
    "Common overrides" said algorithm=tic above rows that ran grpo."""

    def job(arm, ran):
        overrides = {"algorithm": "tic", "arm": arm, "dataset": "chain", "seed": "0"}
        return Job(Path(arm), overrides, "finished", summary={"algorithm": ran})

    groups, common = group_jobs([job("grpo", "grpo"), job("tic", "tic")])
    assert common == ["dataset=chain"] and list(groups) == ["arm=grpo", "arm=tic"]
    _, common = group_jobs([job("a", "tic"), job("b", "tic")])
    assert "algorithm=tic" in common  # every job ran what the override says
