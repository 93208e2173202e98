"""The training core end to end on the embedded tiny model, with sizes that take seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import SMALL_RUN, compose_config
from tic_grpo_cli.algorithms import ALGORITHMS
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runs.checkpoint import load_trainer_state
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.train.loop import train

# Keys whose values depend on wall-clock time, not on the computation.
TIMING = ("time/", "throughput/")

# K = 8 / 2 = 4 optimizer steps a rollout, no evaluations.
K4_RUN = (
            "trainer.rollout_batch_size=8", "trainer.group_size=2", "trainer.minibatch_size=2",
            "trainer.eval_every=0", "trainer.log_samples_every=0", "wandb.mode=disabled",
            "hardware.num_threads=1",
)  # fmt: skip


def deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def test_run_dir_contents_and_metric_keys(tmp_path):
    summary = train(compose_config(*SMALL_RUN), tmp_path)
    for name in ("metrics.jsonl", "samples.jsonl", "summary.json", "curves.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_8"
    assert (tmp_path / "checkpoints" / "step_8" / "model.safetensors").is_file()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    required = {
        "step",
        "epoch",
        "reward/mean",
        "reward/std",
        "accuracy",
        "loss",
        "grad_norm",
        "lr",
        "clip_fraction",
        "ratio/mean",
        "ratio/max",
        "completion_length/mean",
        "frac_zero_std_groups",
        "time/rollout_s",
        "time/update_s",
        "throughput/tokens_per_s",
    }
    assert required <= set(train_rows[0])
    eval_steps = [r["step"] for r in rows if "eval/accuracy" in r]
    assert eval_steps == [0, 4, 8]
    # Before the first update of each rollout, old and current log-probs are the same pass.
    assert all(r["ratio/max"] == 1.0 for r in train_rows if r["minibatch"] == 0)
    assert json.loads((tmp_path / "summary.json").read_text()) == pytest.approx(
        summary, nan_ok=True
    )
    assert summary["steps"] == 8 and 0 <= summary["final/eval_accuracy"] <= 1


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))  # every registered one
def test_every_algorithm_runs(tmp_path, algorithm):
    summary = train(
        compose_config(
            *SMALL_RUN,
            f"algorithm={algorithm}",
            "trainer.max_steps=4",
            "trainer.eval_every=0",
            "trainer.save_every=0",
        ),
        tmp_path,
    )
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert len(rows) == 4 and summary["nonfinite_total"] == 0
    assert all(r["loss"] is not None and r["grad_norm"] is not None for r in rows)


def test_kl_term_loads_a_reference_model(tmp_path):
    train(
        compose_config(
            *SMALL_RUN, "algorithm.kl_coef=0.1", "trainer.max_steps=2", "trainer.eval_every=0"
        ),
        tmp_path,
    )
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert all("stats/kl" in r for r in rows)
    assert rows[0]["stats/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at first


def test_same_seed_same_metrics(tmp_path):
    cfg = compose_config(*SMALL_RUN, "trainer.max_steps=4", "trainer.eval_every=2")
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    a, b = (deterministic(read_jsonl(tmp_path / d / "metrics.jsonl")) for d in ("a", "b"))
    assert a == b


def test_a_fresh_run_in_a_used_dir_sets_the_earlier_rows_aside(tmp_path):
    cfg = compose_config(
        *SMALL_RUN, "trainer.max_steps=2", "trainer.eval_every=0", "trainer.save_every=0"
    )
    train(cfg, tmp_path)
    first = read_jsonl(tmp_path / "metrics.jsonl")
    train(cfg, tmp_path)  # e.g. a sweep re-running an incomplete job, without resume
    second = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in second] == [r["step"] for r in first]  # one run, not two
    earlier = list(tmp_path.glob("metrics.earlier-*.jsonl"))
    assert len(earlier) == 1 and read_jsonl(earlier[0]) == first


def test_seed_everything_seeds_python_numpy_and_torch():
    import random

    import numpy as np

    from tic_grpo_cli.train.loop import seed_everything

    def draws():
        return random.random(), float(np.random.rand()), torch.rand(1).item()

    seed_everything(7)
    first = draws()
    seed_everything(7)
    assert draws() == first
    seed_everything(8)
    assert all(a != b for a, b in zip(draws(), first, strict=True))
    # numpy refuses seeds outside [0, 2**32): they are folded into it.
    seed_everything(2**32 + 7)
    assert draws() == first


@pytest.mark.parametrize(
    "schedule,warmup,expected",
    [
        ("constant", 2, [0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
        ("wsd", 0, [1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]),  # (10 - step) / 4 once below 1
        ("wsd", 2, [0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]),
    ],
)
def test_lr_schedules(schedule, warmup, expected):
    from omegaconf import OmegaConf

    from tic_grpo_cli.train.policy import lr_lambda

    tr = OmegaConf.create(
        {"warmup_steps": warmup, "max_steps": 10, "lr_schedule": schedule, "decay_fraction": 0.4}
    )
    assert [lr_lambda(tr)(step) for step in range(10)] == pytest.approx(expected)


def test_nonfinite_updates_are_skipped_then_stop(tmp_path, monkeypatch):
    import tic_grpo_cli.train.update as train_module

    real = train_module.compute_policy_loss

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    cfg = compose_config(
        *SMALL_RUN,
        "trainer.max_steps=8",
        "trainer.max_nonfinite_steps=3",
        "trainer.save_every=2",
        "trainer.eval_every=0",
    )
    monkeypatch.setattr(train_module, "compute_policy_loss", poisoned)
    with pytest.raises(UserError, match="non-finite"):
        train(cfg, tmp_path)
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["nonfinite"] for r in rows] == [True] * len(rows) and len(rows) >= 3
    assert not (tmp_path / "summary.json").exists()


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    """A scheduler's SIGTERM (SIGINT: tests/train/test_state.py) exits 128 + 15, as a shell
    reports a command SIGTERM ended, not 2 (a bad command)."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tic_grpo_cli",
            "train",
            *SMALL_RUN,
            "trainer.max_steps=100000",
            "trainer.save_every=0",
            f"hydra.run.dir={tmp_path}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(
        "loss" in r for r in read_jsonl(tmp_path / "metrics.jsonl")
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("interrupted at step")
    assert "continue with: " in err and " train resume=" in err and "Traceback" not in err
    assert (tmp_path / "checkpoints" / "latest").is_file()


def test_checkpoint_dir_reloads_as_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train(compose_config(*SMALL_RUN, "trainer.max_steps=2", "trainer.eval_every=0"), tmp_path)
    path = Path(tmp_path / "checkpoints" / "step_2")
    assert AutoModelForCausalLM.from_pretrained(path) is not None
    assert AutoTokenizer.from_pretrained(path).pad_token is not None


def test_bf16_autocast_trains_float32_weights(tmp_path):
    # The `gpu` hardware option's numerics, exercised on the CPU.
    model_dtypes = []
    summary = train(
        compose_config(
            *SMALL_RUN,
            "hardware.mixed_precision=bf16",
            "trainer.max_steps=4",
            "trainer.eval_every=4",
        ),
        tmp_path,
    )
    assert summary["nonfinite_total"] == 0
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "checkpoints" / "step_4" / "model.safetensors")
    model_dtypes = {t.dtype for t in weights.values()}
    assert model_dtypes == {torch.float32}


def test_a_data_error_comes_before_the_model_loads(tmp_path, monkeypatch):
    class NoModel:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr("tic_grpo_cli.models.AutoModelForCausalLM", NoModel)
    data = tmp_path / "six.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"{a}+1=", "answer": a + 1}) + "\n" for a in range(6))
    )
    cfg = compose_config(
        *SMALL_RUN, "dataset=jsonl", f"dataset.path={data}", f"dataset.cache_dir={tmp_path / 'c'}"
    )
    with pytest.raises(UserError, match=r"dataset\.test_size: holding out 100 prompts leaves none"):
        train(cfg, tmp_path / "run")


@pytest.mark.parametrize("max_steps", [10, 8])
def test_the_optimizer_takes_exactly_max_steps(tmp_path, max_steps):
    """K = 8 / 2 = 4 steps a rollout: 10 steps are 2 rollouts and half of a third (the
    optimizer used to take 12, logging 10); the scheduler moves with it."""
    train(
        compose_config(*K4_RUN, f"trainer.max_steps={max_steps}", "trainer.lr_schedule=constant"),
        tmp_path,
    )
    saved = load_trainer_state(tmp_path / "checkpoints" / f"step_{max_steps}")
    adam_steps = {int(s["step"]) for s in saved["optimizer"]["state"].values()}
    assert adam_steps == {max_steps}
    assert saved["scheduler"]["last_epoch"] == max_steps
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, max_steps + 1))
    assert saved["rollouts"] == -(-max_steps // 4)
