"""The staleness study's preset, cut down to seconds, and its report's numbers by hand."""

from __future__ import annotations

import json
import sys

import pytest

from tic_grpo_cli.analysis.studies import staleness as report_module


def test_study_preset_cut_down_runs_skips_and_reports(tmp_path, monkeypatch):
    """experiment=staleness_study with 2 arms x 2 staleness values x 1 seed of 4 steps:
    study.json per job with the staleness facts, a report, and a second run that skips."""
    from tic_grpo_cli.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    runs = tmp_path / "runs"
    args = [
        "sweep", "experiment=staleness_study", "hydra/launcher=basic", "seed=0",
        "trainer.staleness=0,2", "+stale_arm=naive_grpo,tic_decoupled",
        "trainer.rollout_batch_size=2", "trainer.minibatch_size=1", "trainer.group_size=2",
        "trainer.max_steps=4", "trainer.eval_every=2", "dataset.test_size=4",
        f"hydra.sweep.dir={runs}",
    ]  # fmt: skip
    assert main(args) == 0
    records = {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/study.json")}
    assert len(records) == 4
    stale = next(r for name, r in records.items()
                 if "trainer.staleness=2" in name and "tic_decoupled" in name)  # fmt: skip
    assert stale["job"]["staleness"] == 2 and stale["job"]["old_logprobs"] == "recompute"
    assert stale["job"]["rollout_correction"] == "seq_tis"
    # K = 2 steps a rollout; the 2nd update trains data 1 version old.
    assert stale["diag_by_k"]["1"]["staleness"] == pytest.approx(0.5)
    assert "behaviour/kl" in stale["diag_by_k"]["2"]
    stamps = sorted(p.stat().st_mtime_ns for p in runs.glob("*/summary.json"))
    assert main(args) == 0  # finished jobs are skipped
    assert sorted(p.stat().st_mtime_ns for p in runs.glob("*/summary.json")) == stamps
    text = report_module.report(tmp_path, {4: 0.0})
    assert "| 4 | 2 | tic_decoupled (5e-5) | 1 |" in text
    assert "| T (steps) | d | tic_decoupled − naive_grpo |" in text
    for name in ("staleness_study.png", "staleness_study_curves.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def _job(arm, d, seed, accs, lr="1e-4"):
    return {"arm": arm, "d": d, "seed": seed, "lr": lr, "k": 4, "variant": "", "length": 4,
            "record": {"eval": [[16 * i, a, 0.0] for i, a in enumerate(accs)],
                       "diag_by_k": {}}}  # fmt: skip


def test_final_auc_and_paired_differences_by_hand():
    jobs = [
        _job("naive_grpo", 4, 0, [0.4, 0.6, 0.8]),  # final (0.6+0.8)/2 = 0.7, AUC 0.6
        _job("naive_grpo", 4, 1, [0.4, 0.5, 0.7]),  # final 0.6, AUC 0.5333
        _job("tic_behaviour", 4, 0, [0.4, 0.7, 0.9]),  # final 0.8 (+10), AUC 0.6667 (+6.67)
        _job("tic_behaviour", 4, 1, [0.4, 0.6, 0.7]),  # final 0.65 (+5), AUC 0.5667 (+3.33)
    ]
    (row,) = [r for r in report_module.cell_rows(jobs, {4: 0.65}) if r["arm"] == "tic_behaviour"]
    # mean 0.725, std 0.1061, t(1) = 12.706: half-width 0.953
    assert row["final_acc"] == "0.725 [-0.228, 1.678]"
    assert row["auc"].startswith("0.617 ")
    assert row["reached"] == "2/2" and row["steps_to_threshold"].startswith("24 ")  # 16, 32
    finals = report_module.paired(jobs, report_module.final)
    # differences +10 and +5 points: mean +7.5, std 3.536, half-width 12.706 * 2.5 = 31.8
    assert finals[-1] == "| 4 | 4 | +7.5 [-24.3, +39.3] (n=2) |"
    aucs = report_module.paired(jobs, report_module.area_under_curve)
    assert aucs[-1].startswith("| 4 | 4 | +5.0 [")
