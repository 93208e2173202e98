"""The training loop at its edges: a stop signal on a checkpoint step, a run shorter than
the samples interval (issue #24's small ones)."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import SMALL_RUN, compose_config
from tic_grpo_cli.errors import Interrupted
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.train import loop
from tic_grpo_cli.train.loop import train

# 4 prompts x 4 completions, minibatches of 2 prompts: 2 optimizer steps per rollout.
QUICK = ["trainer.eval_every=0", "trainer.log_every=1"]


def test_a_signal_during_a_save_every_rollout_saves_its_checkpoint_once(tmp_path, monkeypatch):
    """SIGINT arrives while the rollout that ends on step 2 (save_every=2) trains: the loop
    saves step 2 for save_every, then stops; it must not write step 2 a second time."""
    saved_steps = []
    save_checkpoint, policy_update = loop.save_checkpoint, loop.policy_update

    def counting_save(dist, run_dir, step, *args, **kwargs):
        saved_steps.append(step)
        return save_checkpoint(dist, run_dir, step, *args, **kwargs)

    def update_then_signal(*args, **kwargs):
        rows = policy_update(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)  # the StopFlag handler the loop installed
        return rows

    monkeypatch.setattr(loop, "save_checkpoint", counting_save)
    monkeypatch.setattr(loop, "policy_update", update_then_signal)
    with pytest.raises(Interrupted) as stopped:
        train(
            compose_config(*SMALL_RUN, *QUICK, "trainer.max_steps=8", "trainer.save_every=2"),
            tmp_path,
        )
    assert saved_steps == [2]
    assert "interrupted at step 2" in str(stopped.value)
    assert str(tmp_path / "checkpoints" / "step_2") in str(stopped.value)


@pytest.mark.parametrize("every,logged", [(400, [6]), (4, [4, 6]), (0, [])])
def test_samples_are_logged_at_the_last_step_too(tmp_path, every, logged):
    """samples.jsonl holds the samples of every `log_samples_every` step and of the last
    one, so a run shorter than the interval still shows what the model wrote; 0 turns
    samples off. Samples are logged once per rollout (2 steps here), at its last step."""
    cfg = compose_config(*SMALL_RUN, *QUICK, "trainer.max_steps=6", "trainer.save_every=0",
                   f"trainer.log_samples_every={every}")  # fmt: skip
    train(cfg, tmp_path)
    path = tmp_path / "samples.jsonl"
    steps = sorted({row["step"] for row in read_jsonl(path)}) if path.exists() else []
    assert steps == logged
