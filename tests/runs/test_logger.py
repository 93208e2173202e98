"""What a run logs: the W&B offline run holds the logged keys, and a resumed one holds the
run's whole history once, with no step twice."""

from __future__ import annotations

import shutil

from tests.conftest import SMALL_RUN, compose_config
from tic_grpo_cli.train.loop import train

# Checkpoints every 2 of 4 steps, all kept, logged to an offline W&B run.
RESUMED_RUN = (
    "trainer.max_steps=4", "trainer.rollout_batch_size=4", "trainer.group_size=4",
    "trainer.minibatch_size=2", "trainer.eval_every=2", "trainer.eval_limit=8",
    "trainer.save_every=2", "trainer.keep_last=0", "trainer.log_samples_every=0",
    "wandb.mode=offline", "hardware.num_threads=1",
)  # fmt: skip


def test_wandb_offline_run_holds_the_logged_keys(tmp_path):
    from tests.runs.wandb_records import wait_for_history_keys

    train(
        compose_config(
            *SMALL_RUN, "wandb.mode=offline", "trainer.max_steps=2", "trainer.eval_every=0"
        ),
        tmp_path,
    )
    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    expected = {"reward/mean", "loss", "clip_fraction", "ratio/max"}
    assert expected <= wait_for_history_keys(files[0], expected)


def test_resumed_offline_run_replays_the_kept_rows_and_supersedes_the_old_folder(tmp_path):
    from tests.runs.wandb_records import history_steps

    train(compose_config(*RESUMED_RUN), tmp_path)
    # As if killed after logging step 4, before its checkpoint: rows 3-4 are in the first
    # W&B folder, and the run resumes from step 2.
    shutil.rmtree(tmp_path / "checkpoints" / "step_4")
    (tmp_path / "summary.json").unlink()
    (first,) = tmp_path.glob("wandb/offline-run-*")
    train(compose_config(*RESUMED_RUN, "resume=auto"), tmp_path)
    (current,) = tmp_path.glob("wandb/offline-run-*")
    assert current.name != first.name
    assert (tmp_path / "wandb" / "superseded" / first.name).is_dir()  # kept, not deleted
    (run_file,) = current.glob("run-*.wandb")
    # Step 0 (the base model's evaluation) to 4, each once: W&B merges the rows of one step.
    steps = history_steps(run_file, expected=5)
    assert steps == [0, 1, 2, 3, 4]
