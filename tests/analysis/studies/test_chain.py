"""The chain study: its arms, a cut-down run of its preset, and its report's tables by hand."""

from __future__ import annotations

import json
import shutil

from omegaconf import OmegaConf

from tests.conftest import compose_config


def test_arms_set_algorithm_and_lower_clip():
    cfg = compose_config("+arm=traj_is_nolow")
    assert (cfg.algorithm.name, cfg.algorithm.epsilon_low) == ("traj_is", 1.0)
    cfg = compose_config("+arm=tic", "trainer.lr=3e-4")
    assert (cfg.algorithm.name, cfg.trainer.lr) == ("tic", 3e-4)
    assert OmegaConf.select(cfg, "algorithm.epsilon_low") == 0.2


def test_study_preset_cut_down_runs_skips_and_reports(tmp_path, monkeypatch):
    """experiment=chain_study with 2 arms x 1 seed of 2 steps: study.json per job, the report,
    and a second run that skips both finished jobs."""
    import sys

    from tic_grpo_cli.analysis.studies import chain as chain_study
    from tic_grpo_cli.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    runs = tmp_path / "runs"
    args = [
        "sweep",
        "experiment=chain_study",
        "hydra/launcher=basic",  # in this process: no worker start-up
        "dataset=chain",
        "seed=0",
        "+arm=grpo,traj_is_nolow",
        "trainer.rollout_batch_size=2",
        "trainer.minibatch_size=1",
        "trainer.group_size=2",
        "trainer.max_steps=2",
        "trainer.eval_every=1",
        "trainer.eval_limit=4",
        "dataset.train_size=16",
        "dataset.test_size=4",
        f"hydra.sweep.dir={runs}",
    ]
    assert main(args) == 0
    records = sorted(runs.glob("*/study.json"))
    assert len(records) == 2
    first = json.loads(records[0].read_text())
    assert first["job"]["K"] == 2 and first["job"]["chain_length"] == 4
    assert [row[0] for row in first["eval"]] == [0, 2]  # evaluations come at rollout ends
    assert set(first["diag_by_k"]) == {"1", "2"}
    stamps = [r.stat().st_mtime_ns for r in runs.glob("*/summary.json")]
    assert main(args) == 0  # everything finished: nothing runs again
    assert [r.stat().st_mtime_ns for r in runs.glob("*/summary.json")] == stamps

    # A job of another length in the same dir (a user's 16-step try): reported apart.
    longer = runs / "longer"
    shutil.copytree(records[0].parent, longer)
    overrides_file = longer / ".hydra" / "overrides.yaml"
    overrides_file.write_text(overrides_file.read_text().replace("max_steps=2", "max_steps=16"))
    # The supplement: the grpo job again, as if run at another learning rate.
    grpo_job = next(p.parent for p in records if "+arm=grpo," in p.parent.name)
    other = tmp_path / "supplement" / grpo_job.name
    shutil.copytree(grpo_job, other)
    record = json.loads((other / "study.json").read_text())
    record["job"]["lr"] = 3e-4
    (other / "study.json").write_text(json.dumps(record))

    text = chain_study.report(tmp_path, {4: 0.0})
    study_part, supplement_part = text.split("## Supplement")
    assert "| 4 | 2 | grpo (1e-4) | 1 |" in study_part
    assert "| 4 | 2 | traj_is_nolow (1e-4) | 1 |" in study_part
    assert "3e-4" not in study_part and "| 4 | 2 | grpo (3e-4) | 1 |" in supplement_part
    assert "| T (steps) | K | grpo (3e-4) − grpo |" in supplement_part  # paired, by seed
    assert "| T (steps) | K | traj_is_nolow − grpo |" in study_part  # one seed: no interval
    assert "| 4 | 2 | grpo (1e-4, trainer.max_steps=16) | 1 |" in study_part
    assert "1 jobs ran with overrides outside the study's design" in study_part
    rows = (tmp_path / "cells.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[-1].startswith("supplement,4,2,grpo,3e-4,,1,")
    for name in ("chain_study_curves.png", "chain_study_steps.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    # The sweep dir itself (hydra.sweep.dir=DIR): its jobs, not an empty report.
    assert "| 4 | 2 | grpo (1e-4) | 1 |" in chain_study.report(runs, {4: 0.0})


def test_learning_rate_choice_by_hand():
    from tic_grpo_cli.analysis.studies.chain import lr_table

    def job(arm, lr, accs):
        return {
            "arm": arm,
            "lr": lr,
            "record": {"eval": [[8 * i, a, 0.0] for i, a in enumerate(accs)]},
        }

    jobs = [
        job("tic", "5e-05", [0.4, 0.6, 0.7]),  # mean of the last two: 0.65
        job("tic", "0.0001", [0.4, 0.7, 0.6]),  # 0.65 too: the tie goes to the smaller rate
        job("grpo", "5e-05", [0.4, 0.8, 0.7]),  # 0.75
        job("grpo", "0.0001", [0.4, 0.8, 0.9]),  # 0.85
    ]
    lines, chosen = lr_table(jobs)
    assert chosen == {"grpo": "0.0001", "tic": "5e-05"}
    assert "| tic | 5e-05: 0.650 (1), 0.0001: 0.650 (1) | 5e-05 |" in lines


def test_paired_difference_by_hand():
    from tic_grpo_cli.analysis.studies.chain import paired_rows

    def job(arm, seed, final):
        evals = [[0, 0.4, 0.0], [8, final, 1.0], [16, final, 2.0]]  # mean of last two = final
        return {"arm": arm, "seed": seed, "length": 4, "k": 8, "record": {"eval": evals}}

    jobs = [job("grpo", s, 0.50 + 0.1 * s) for s in range(3)]
    # tic - grpo = +2, +4, +6 points: mean 4, sd 2, t(0.975, 2) = 4.303, half = 4.303 * 2 / √3
    jobs += [job("tic", s, 0.50 + 0.1 * s + d) for s, d in enumerate((0.02, 0.04, 0.06))]
    jobs += [job("traj_is", 0, 0.9), job("traj_is", 7, 0.9)]  # seed 7 has no grpo pair: n = 1
    lines = paired_rows(jobs)
    assert lines[0] == "| T (steps) | K | tic − grpo | traj_is − grpo |"
    assert lines[2] == "| 4 | 8 | +4.0 [-1.0, +9.0] (n=3) | - |"


def test_inner_loop_table_by_hand():
    from tic_grpo_cli.analysis.studies.chain import inner_loop_rows

    def job(arm, k, by_k):
        diag = {str(i + 1): {"ratio_diag/ess": v} for i, v in enumerate(by_k)}
        return {"arm": arm, "k": k, "length": 4, "record": {"diag_by_k": diag}}

    jobs = [job("tic", 2, [1.0, 0.8]), job("tic", 2, [1.0, 0.6]), job("grpo", 4, [1, 1, 1, 1])]
    lines = inner_loop_rows(jobs, "ratio_diag/ess", 2)  # the K = 4 job is another cell
    assert lines == [
        "| T (steps) | arm | k=1 | k=2 |",
        "|---|---|---|---|",
        "| 4 | tic | 1.000 | 0.700 |",
    ]
