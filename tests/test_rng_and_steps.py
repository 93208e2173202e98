"""What a run counts and saves: exactly trainer.max_steps optimizer steps, and the RNG
states a resume needs, CUDA's included when CUDA is in use."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from tic_grpo_cli.config.schema import register_configs
from tic_grpo_cli.runs.checkpoint import load_trainer_state
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.train import state as train_state
from tic_grpo_cli.train.loop import train


def make_cfg(*overrides: str):
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose("train", overrides=[
            "trainer.rollout_batch_size=8", "trainer.group_size=2", "trainer.minibatch_size=2",
            "trainer.eval_every=0", "trainer.log_samples_every=0", "wandb.mode=disabled",
            "hardware.num_threads=1", *overrides,
        ])  # fmt: skip


@pytest.mark.parametrize("max_steps", [10, 8])
def test_the_optimizer_takes_exactly_max_steps(tmp_path, max_steps):
    """K = 8 / 2 = 4 steps a rollout: 10 steps are 2 rollouts and half of a third (the
    optimizer used to take 12, logging 10); the scheduler moves with it."""
    train(make_cfg(f"trainer.max_steps={max_steps}", "trainer.lr_schedule=constant"), tmp_path)
    saved = load_trainer_state(tmp_path / "checkpoints" / f"step_{max_steps}")
    adam_steps = {int(s["step"]) for s in saved["optimizer"]["state"].values()}
    assert adam_steps == {max_steps}
    assert saved["scheduler"]["last_epoch"] == max_steps
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, max_steps + 1))
    assert saved["rollouts"] == -(-max_steps // 4)


def test_cuda_rng_states_are_saved_and_restored(monkeypatch):
    """With CUDA in use, every device's generator state goes into the checkpoint and comes
    back on resume (faked here: this machine has no GPU; tests marked gpu run it for real)."""
    devices = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5], dtype=torch.uint8)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [d.clone() for d in devices])
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda value, device: restored.__setitem__(device, value))  # fmt: skip
    generator = torch.Generator()
    saved = train_state.rng_state(generator)
    assert [t.tolist() for t in saved["cuda"]] == [[1, 2, 3], [4, 5]]
    train_state.set_rng_state(saved, generator)
    assert {d: t.tolist() for d, t in restored.items()} == {0: [1, 2, 3], 1: [4, 5]}


def test_without_cuda_no_cuda_state_is_saved():
    assert "cuda" not in train_state.rng_state(torch.Generator())
