"""Checkpoints are written whole or not at all, and pruned to what the config keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tic_grpo_cli.config.choices import AlgorithmName
from tic_grpo_cli.config.schema import TrainerConfig
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runs import checkpoint as ckpt


def writer(tag: str, extra: str | None = None):
    """A write_model that saves a stand-in model tagged `tag` (and a file `extra`)."""

    def write(out: Path) -> None:
        (out / "config.json").write_text(tag)
        (out / "model.safetensors").write_text(tag)
        if extra:
            (out / extra).write_text(tag)

    return write


def failing_halfway(out: Path) -> None:
    (out / "config.json").write_text("half")
    raise OSError(28, "No space left on device")


def save(run: Path, step: int, write=None, **kwargs) -> Path:
    return ckpt.save_checkpoint(run, step, write or writer(f"s{step}"), {"step": step}, **kwargs)


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))


def test_a_write_that_fails_halfway_leaves_no_step_dir(tmp_path):
    save(tmp_path, 2)
    with pytest.raises(UserError, match=r"could not save checkpoint .*step_4.*intact.*step_2"):
        save(tmp_path, 4, failing_halfway)
    assert not (tmp_path / "checkpoints" / "step_4").exists()
    assert leftovers(tmp_path) == []
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_2"
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2]


def test_a_failed_rewrite_of_an_existing_step_keeps_the_old_one(tmp_path):
    save(tmp_path, 4, writer("old"))
    with pytest.raises(UserError):
        save(tmp_path, 4, failing_halfway)
    step = tmp_path / "checkpoints" / "step_4"
    assert (step / "config.json").read_text() == "old" and ckpt.is_checkpoint(step)
    assert leftovers(tmp_path) == []


def test_a_rewrite_replaces_the_step_dir_whole(tmp_path):
    save(tmp_path, 4, writer("old", extra="stale.txt"))
    save(tmp_path, 4, writer("new"))
    step = tmp_path / "checkpoints" / "step_4"
    assert (step / "config.json").read_text() == "new"
    assert not (step / "stale.txt").exists()
    assert leftovers(tmp_path) == []


def test_pruning_keeps_exactly_keep_last(tmp_path):
    for step in range(1, 6):
        save(tmp_path, step, keep_last=2, keep_every=0)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 5]


def test_keep_every_keeps_the_first_checkpoint_of_each_window(tmp_path):
    for step in range(400, 2801, 400):
        save(tmp_path, step, keep_last=2, keep_every=800)
    # Windows of 800 steps: [400], [800, 1200], [1600, 2000], [2400, 2800]; their first
    # checkpoints, plus the newest two.
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [400, 800, 1600, 2400, 2800]


def test_a_default_run_keeps_a_curve_of_checkpoints():
    defaults = TrainerConfig()
    saved = range(defaults.save_every, defaults.max_steps + 1, defaults.save_every)
    kept = ckpt.kept_steps(list(saved), defaults.keep_last, defaults.keep_every)
    assert len(kept) > 2 and max(saved) in kept


def test_keep_last_zero_keeps_everything(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step, keep_last=0, keep_every=0)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 2, 3]


def test_the_newest_complete_checkpoint_wins_whatever_latest_says(tmp_path):
    save(tmp_path, 4)
    save(tmp_path, 8)
    (tmp_path / "checkpoints" / "step_8" / "model.safetensors").unlink()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_8"
    assert ckpt.resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_4"
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4]
    with pytest.raises(UserError, match="step_8 is incomplete \\(missing model weights\\)"):
        ckpt.resolve_checkpoint(tmp_path / "checkpoints" / "step_8")


def test_a_configs_choices_are_stored_as_plain_strings(tmp_path):
    # The config in the trainer state holds Enum choices; weights_only loading refuses
    # those, and a checkpoint must not depend on the schema's class names.
    config = OmegaConf.to_container(compose_config("algorithm=grpo", "hardware.device=cpu"))
    state = {"step": 2, "config": config, "rng": (3, [AlgorithmName.tic])}
    path = ckpt.save_checkpoint(tmp_path, 2, writer("s2"), state)
    saved = ckpt.load_trainer_state(path)
    assert saved["config"]["algorithm"]["name"] == "grpo"
    assert type(saved["config"]["algorithm"]["name"]) is str
    assert type(saved["config"]["hardware"]["device"]) is str
    assert saved["rng"] == (3, ["tic"]) and type(saved["rng"][1][0]) is str
