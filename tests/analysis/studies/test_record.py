"""The chain study's per-job record (study.json), by hand."""

from __future__ import annotations

import json

import pytest

from tic_grpo_cli.analysis.studies import record as study


def metric_rows():
    """Two rollouts of K = 2 steps with an eval at 0, 2 and 4, as the trainer logs them."""
    rows = [{"step": 0, "eval/accuracy": 0.3}]
    for rollout, (reward, seconds) in enumerate(((0.25, 1.5), (0.5, 2.5)), start=1):
        for k in range(2):
            rows.append(
                {
                    "step": 2 * (rollout - 1) + k + 1,
                    "rollout": rollout,
                    "minibatch": k,
                    "reward/mean": reward,
                    "time/rollout_s": seconds - 1.0,
                    "time/update_s": 1.0,
                    "clip_fraction": 0.1 * k,
                    "ratio_diag/kl_old": 0.01 * k * rollout,
                }
            )
        rows.append({"step": 2 * rollout, "eval/accuracy": 0.3 + 0.1 * rollout})
    return rows


def test_study_record_by_hand(tmp_path):
    resumed = [*metric_rows(), {"step": 4, "eval/accuracy": 0.5}]  # resume repeats an eval
    assert study.compact(resumed)["eval"] == study.compact(metric_rows())["eval"]
    record = study.compact(metric_rows())
    assert record["eval"] == [[0, 0.3, 0.0], [2, 0.4, 1.5], [4, 0.5, 4.0]]
    assert record["reward"] == [[1, 0.25], [3, 0.5]]
    assert record["diag_by_k"]["1"] == {"clip_fraction": 0.0, "ratio_diag/kl_old": 0.0}
    assert record["diag_by_k"]["2"]["ratio_diag/kl_old"] == pytest.approx((0.01 + 0.02) / 2)
    run = tmp_path / "job"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metric_rows()))
    assert study.record(run) is None  # not finished: no summary.json
    (run / "summary.json").write_text("{}")
    assert json.loads(study.record(run).read_text()) == json.loads(json.dumps(record))
