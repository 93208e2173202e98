"""`tic-grpo eval checkpoint=<run> checkpoint.all=true` starts its curve at the run's base
model, step 0, when the run's saved config names the model eval loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tic_grpo_cli.config.schema import register_configs
from tic_grpo_cli.evaluation.evaluate import evaluate
from tic_grpo_cli.train.loop import train

TRAIN = [
    "trainer.max_steps=4",
    "trainer.rollout_batch_size=4",
    "trainer.group_size=2",
    "trainer.minibatch_size=4",
    "trainer.eval_every=0",
    "trainer.save_every=2",
    "trainer.keep_last=0",
    "wandb.mode=disabled",
    "hardware.num_threads=1",
]


def compose_cfg(name: str, *overrides: str):
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run with checkpoints at steps 2 and 4 and the config Hydra saves beside them."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose_cfg("train", *TRAIN)
    train(cfg, run)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    return run


def evaluate_all(run: Path, out: Path, *extra: str) -> dict:
    return evaluate(
        compose_cfg(
            "eval", f"checkpoint.path={run}", "checkpoint.all=true", "eval.limit=4", *extra
        ),
        out,
    )


def test_the_curve_starts_at_the_base_model(run, tmp_path):
    results = evaluate_all(run, tmp_path)
    assert [r["step"] for r in results["results"]] == [0, 2, 4]
    base = results["results"][0]
    assert base["label"] == "base" and base["checkpoint"] is None and base["model"] == "tiny"
    assert results["metrics"] == results["results"][-1]["metrics"]  # still the latest
    assert (tmp_path / "accuracy_vs_step.png").stat().st_size > 10_000


def test_no_base_when_asked_or_when_the_model_is_not_the_runs(run, tmp_path):
    steps = [
        r["step"] for r in evaluate_all(run, tmp_path / "a", "checkpoint.base=false")["results"]
    ]
    assert steps == [2, 4]
    other = evaluate_all(run, tmp_path / "b", "model=tiny_chain")["results"]
    assert [r["step"] for r in other] == [2, 4]
