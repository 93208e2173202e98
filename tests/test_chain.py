"""The `chain` task, the trajectory-ratio diagnostics and the study's per-job record."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tic_grpo_cli.algorithms import diagnostics
from tic_grpo_cli.analysis.studies import record as study
from tic_grpo_cli.config.schema import ConfigError, register_configs
from tic_grpo_cli.config.validation import validate_train
from tic_grpo_cli.data import build_task, chain


def compose_train(*overrides: str):
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_worked_answer_by_hand():
    problem = chain.ChainProblem(57, (("+", 3), ("-", 8), ("+", 6)))
    assert problem.question == "57+3-8+6="
    assert problem.answer == "57+3=60,60-8=52,52+6=58"


@pytest.mark.parametrize("length", [2, 4, 8])
def test_problems_are_valid_and_fit_the_token_budget(length):
    for p in chain.generate("train", 300, seed=1, chain_length=length):
        assert len(p.steps) == length
        value = p.start
        for op, b in p.steps:
            assert 1 <= b <= 9
            value = value + b if op == "+" else value - b
            assert 0 <= value <= 99
        assert int(p.answer.rsplit("=", 1)[1]) == value
        # Every step is at most "99-9=90," and the answer plus EOS fits 8 tokens per step.
        assert len(p.answer) + 1 <= 8 * length == chain.max_completion_tokens(length)


def test_splits_are_disjoint_and_deterministic():
    splits = {s: chain.generate(s, 400, seed=0, chain_length=3) for s in chain.SPLITS}
    questions = {s: {p.question for p in ps} for s, ps in splits.items()}
    assert all(len(q) == 400 for q in questions.values())
    assert not questions["train"] & questions["test"]
    assert not questions["train"] & questions["validation"]
    assert not questions["validation"] & questions["test"]
    assert chain.generate("test", 400, seed=0, chain_length=3) == splits["test"]
    assert chain.generate("test", 50, seed=1, chain_length=3) != splits["test"][:50]


def test_bad_split_and_too_many_problems():
    with pytest.raises(ValueError, match="split must be one of"):
        chain.generate("dev", 5)
    with pytest.raises(ValueError, match=r"only .* distinct"):
        chain.generate("test", 5000, chain_length=1)  # ~190 one-step test problems exist


def test_task_scores_the_whole_chain_and_evaluates_validation_on_request():
    cfg = compose_train("dataset=chain", "dataset.test_split=validation", "dataset.test_size=20")
    task = build_task(cfg.dataset)
    example = task.test[0]
    assert chain.split_of(example["question"]) == "validation"
    assert example["prompt"] == example["question"]
    right = example["answer"]
    wrong_last = right[:-1] + str((int(right[-1]) + 1) % 10)
    result = task.score([right, wrong_last, right + ",", ""], [example] * 4)
    assert result.correct == [True, False, False, False]


def test_chain_long_preset_and_bad_splits():
    cfg = compose_train("dataset=chain_long", "model=tiny_chain")
    assert (cfg.dataset.chain_length, cfg.dataset.max_completion_length) == (8, 64)
    validate_train(cfg)
    with pytest.raises(
        ConfigError, match=r"dataset.test_split: got 'validation' \(allowed: test\)"
    ):
        validate_train(compose_train("dataset=arithmetic", "dataset.test_split=validation"))
    with pytest.raises(ConfigError, match=r"dataset.chain_length: must be >= 1"):
        validate_train(compose_train("dataset=chain", "dataset.chain_length=0"))


def test_ratio_diagnostics_by_hand():
    # Two completions; the second has one padded token. log rho = 0.2 + 0.1 = 0.3 and -0.5.
    old = torch.zeros(2, 2)
    new = torch.tensor([[0.2, 0.1], [-0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    moments = diagnostics.ratio_moments(new, old, mask, epsilon_high=0.28)
    stats = diagnostics.finish(moments)
    rho = [math.exp(0.3), math.exp(-0.5)]
    assert stats["log_rho_std"] == pytest.approx(0.4)  # population std of 0.3 and -0.5
    assert stats["capped_fraction"] == 0.5  # exp(0.3) = 1.35 > 1.28; exp(-0.5) is not
    assert stats["ess"] == pytest.approx(sum(rho) ** 2 / (2 * sum(r * r for r in rho)))
    k3 = [math.exp(x) - 1 - x for x in (0.2, 0.1, -0.5)]
    assert stats["kl_old"] == pytest.approx((k3[0] + k3[1] + k3[2]) / 2)


def test_ratio_diagnostics_merge_across_micro_batches():
    torch.manual_seed(0)
    old, new = torch.randn(6, 5), torch.randn(6, 5) * 0.1
    mask = (torch.rand(6, 5) > 0.3).float()
    whole = diagnostics.finish(diagnostics.ratio_moments(new, old + new * 0, mask, 0.28))
    merged: dict[str, float] = {}
    for rows, weight in ((slice(0, 2), 2 / 6), (slice(2, 6), 4 / 6)):
        part = diagnostics.ratio_moments(new[rows], old[rows], mask[rows], 0.28)
        for key, value in part.items():
            merged[key] = merged.get(key, 0.0) + value * weight
    for key, value in diagnostics.finish(merged).items():
        assert value == pytest.approx(whole[key]), key


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


def test_arms_set_algorithm_and_lower_clip():
    cfg = compose_train("+arm=traj_is_nolow")
    assert (cfg.algorithm.name, cfg.algorithm.epsilon_low) == ("traj_is", 1.0)
    cfg = compose_train("+arm=tic", "trainer.lr=3e-4")
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
