"""A resumed offline W&B run holds the run's whole history once, with no step twice."""

from __future__ import annotations

import shutil

from hydra import compose, initialize_config_module

from tic_grpo_cli.config.schema import register_configs
from tic_grpo_cli.train.loop import train

SMALL = [
    "trainer.max_steps=4", "trainer.rollout_batch_size=4", "trainer.group_size=4",
    "trainer.minibatch_size=2", "trainer.eval_every=2", "trainer.eval_limit=8",
    "trainer.save_every=2", "trainer.keep_last=0", "trainer.log_samples_every=0",
    "wandb.mode=offline", "hardware.num_threads=1",
]  # fmt: skip


def make_cfg(*overrides: str):
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose("train", overrides=[*SMALL, *overrides])


def test_resumed_offline_run_replays_the_kept_rows_and_supersedes_the_old_folder(tmp_path):
    from wandb_records import history_steps

    train(make_cfg(), tmp_path)
    # As if killed after logging step 4, before its checkpoint: rows 3-4 are in the first
    # W&B folder, and the run resumes from step 2.
    shutil.rmtree(tmp_path / "checkpoints" / "step_4")
    (tmp_path / "summary.json").unlink()
    (first,) = tmp_path.glob("wandb/offline-run-*")
    train(make_cfg("resume=auto"), tmp_path)
    (current,) = tmp_path.glob("wandb/offline-run-*")
    assert current.name != first.name
    assert (tmp_path / "wandb" / "superseded" / first.name).is_dir()  # kept, not deleted
    (run_file,) = current.glob("run-*.wandb")
    # Step 0 (the base model's evaluation) to 4, each once: W&B merges the rows of one step.
    steps = history_steps(run_file, expected=5)
    assert steps == [0, 1, 2, 3, 4]
