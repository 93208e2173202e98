"""`tic-grpo eval checkpoint=<run>` scores the run's own task: its model, data set, prompt
and reward config, with the command line still able to change any of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tic_grpo_cli.config.schema import register_configs
from tic_grpo_cli.evaluation.run_config import adopt_run_config
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
MY_TASK = [
    "dataset=jsonl",
    f"dataset.path={ROOT / 'examples' / 'my_task'}",
    "dataset.prompt_field=problem",
    "dataset.answer_field=solution",
    "dataset.max_completion_length=6",
    "dataset.system_prompt=Answer with a number.",
    "dataset.reward.format_pattern='^[0-9]+$'",
    "dataset.reward.format_weight=0.1",
]
SMALL = [
    "trainer.max_steps=2",
    "trainer.rollout_batch_size=4",
    "trainer.group_size=2",
    "trainer.minibatch_size=4",
    "trainer.eval_every=0",
    "wandb.mode=disabled",
    "hardware.num_threads=1",
]


def compose_cfg(name: str, overrides: list[str]):
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose(name, overrides=overrides)


def fake_run(tmp_path: Path, overrides: list[str]) -> Path:
    """A run dir holding only what eval reads here: the composed config Hydra saves."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_cfg("train", overrides), run / ".hydra" / "config.yaml")
    return run


def test_the_run_config_is_the_default(tmp_path):
    run = fake_run(tmp_path, [*MY_TASK, "trainer.max_completion_length=12"])
    given = [f"checkpoint.path={run / 'checkpoints' / 'step_2'}"]
    cfg = compose_cfg("eval", given)
    adopt_run_config(cfg, given)
    assert cfg.dataset.kind == "hf" and cfg.dataset.path.endswith("my_task")
    assert cfg.dataset.prompt_field == "problem" and cfg.dataset.answer_field == "solution"
    assert cfg.dataset.system_prompt == "Answer with a number."
    assert cfg.dataset.reward.format_pattern == "^[0-9]+$"
    assert cfg.eval.max_new_tokens == 12  # the limit the run evaluated itself at


def test_command_line_keys_and_groups_still_win(tmp_path):
    run = fake_run(tmp_path, MY_TASK)
    given = [f"checkpoint.path={run}", "dataset.max_completion_length=3"]
    cfg = compose_cfg("eval", given)
    adopt_run_config(cfg, given)
    assert cfg.dataset.path.endswith("my_task") and cfg.eval.max_new_tokens == 3
    given = [f"checkpoint.path={run}", "dataset=countdown"]
    cfg = compose_cfg("eval", given)
    adopt_run_config(cfg, given)
    assert cfg.dataset.kind == "countdown"


def test_a_model_or_a_bare_checkpoint_keeps_evals_own_config(tmp_path):
    for given in ([], [f"checkpoint.path={tmp_path}"]):
        cfg = compose_cfg("eval", given)
        assert adopt_run_config(cfg, given) == []
        assert cfg.dataset.kind == "arithmetic"


def test_eval_of_a_run_trained_on_a_jsonl_scores_that_task(tmp_path):
    run = tmp_path / "run"
    train(compose_cfg("train", [*MY_TASK, *SMALL]), run)
    (run / ".hydra").mkdir()  # what the CLI's Hydra writes before train() runs
    OmegaConf.save(compose_cfg("train", [*MY_TASK, *SMALL]), run / ".hydra" / "config.yaml")
    out = tmp_path / "eval"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "tic_grpo_cli", "eval", f"checkpoint={run}"]
    subprocess.run([*command, f"hydra.run.dir={out}"], check=True, env=env, timeout=300)
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["name"].endswith("my_task")
    assert results["dataset"]["num_evaluated"] == 12  # examples/my_task/test.jsonl
    problems = {r["problem"] for r in read_jsonl(ROOT / "examples" / "my_task" / "test.jsonl")}
    prompts = [p["prompt"] for p in read_jsonl(out / "predictions.jsonl")]
    assert all(any(q in p for q in problems) for p in prompts)
    assert all("Answer with a number." in p for p in prompts)
    assert results["config"]["eval"]["max_new_tokens"] == 6
