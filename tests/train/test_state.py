"""Resume continues the same run in place, from its own saved config, refusing changes to
what the run is, and from the newest complete checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import SMALL_RUN, compose_config, kill_and_resume
from tests.train.test_loop import deterministic
from tic_grpo_cli.cli import main
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.train import state as train_state
from tic_grpo_cli.train.loop import train

ENV = {**os.environ, "WANDB_MODE": "disabled"}
SHORT = ["trainer.max_steps=4", "trainer.save_every=2", "trainer.eval_every=0"]


def steps(run: Path, key: str = "loss") -> list[int]:
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if key in r]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 4-step run with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("finished")
    train(compose_config(*SMALL_RUN, *SHORT), run)
    return run


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.group_size=8", "trainer.group_size"),
        ("dataset.train_size=500", "dataset.train_size"),
        ("dataset.reward.scorer=number", "dataset.reward.scorer"),
        ("trainer.rollout_batch_size=8", "trainer.rollout_batch_size"),
        ("trainer.max_completion_length=12", "trainer.max_completion_length"),
        ("seed=1", "seed"),
        ("algorithm=grpo", "algorithm."),
    ],
)
def test_resume_refuses_an_override_that_changes_the_run(finished_run, tmp_path, override, key):
    with pytest.raises(UserError, match=rf"^{re.escape(key)}\S*=.*differs from the checkpoint"):
        train(compose_config(*SMALL_RUN, *SHORT, override, f"resume={finished_run}"), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resume_below_the_checkpoint_step_is_refused(finished_run, tmp_path):
    with pytest.raises(UserError, match=r"trainer\.max_steps=2 is below the checkpoint's step 4"):
        train(
            compose_config(*SMALL_RUN, *SHORT, "trainer.max_steps=2", f"resume={finished_run}"),
            tmp_path,
        )


def test_an_incomplete_newest_checkpoint_is_skipped(tmp_path, caplog):
    train(compose_config(*SMALL_RUN, *SHORT, "trainer.keep_last=0"), tmp_path)
    (tmp_path / "checkpoints" / "step_4" / "model.safetensors").unlink()
    train(compose_config(*SMALL_RUN, *SHORT, "trainer.max_steps=6", "resume=auto"), tmp_path)
    assert re.search(
        r"skipping \S*step_4: incomplete \(missing model weights\); resuming from step_2",
        caplog.text,
    )
    assert steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_resume_restores_the_saved_config_and_applies_safe_overrides(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *SMALL_RUN, *SHORT, f"hydra.run.dir={run}"]) == 0
    # Nothing retyped but a longer run: rollout and group sizes, lengths... come from the run.
    assert main(["train", f"resume={run}", "trainer.max_steps=6", "trainer.log_every=1"]) == 0
    assert steps(run) == [1, 2, 3, 4, 5, 6]
    state = torch.load(run / "checkpoints" / "step_6" / "trainer_state.pt", weights_only=True)
    assert (
        state["config"]["trainer"]["group_size"] == 4
        and state["config"]["trainer"]["max_steps"] == 6
    )
    log = (run / "train.log").read_text()
    assert "resume: trainer.max_steps changed from 4 to 6" in log
    assert "trainer.max_steps=4" in (run / ".hydra" / "overrides.yaml").read_text()  # as it was
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]  # no other run dir


def test_resuming_a_finished_run_says_so_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *SMALL_RUN, *SHORT, f"hydra.run.dir={run}"]) == 0

    def files() -> dict[str, bytes]:  # the run lock and the console log may change
        skip = {"run.lock", "train.log"}
        return {
            str(p): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name not in skip
        }

    before = files()
    assert main(["train", f"resume={run}"]) == 0
    assert files() == before  # no second step-4 eval row, checkpoint or wall_time_s
    assert re.search(
        rf"run already finished at step 4 .*resume={re.escape(str(run))} trainer\.max_steps=8$",
        (run / "train.log").read_text().strip(),
    )


def test_the_command_printed_on_interrupt_continues_the_run_in_place(tmp_path):
    """Ctrl-C a default-dir run, then run exactly the command it prints, from elsewhere."""
    overrides = [*SMALL_RUN, "trainer.max_steps=12", "trainer.save_every=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tic_grpo_cli", "train", *overrides], cwd=tmp_path, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 180
    while time.time() < deadline and not any(
        steps(run) for run in tmp_path.glob("outputs/train/*/*")
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err  # stopped by SIGINT, not a bad command (2)
    assert "error" not in err and "Traceback" not in err
    (run,) = tmp_path.glob("outputs/train/*/*")
    stopped_at = max(steps(run))
    assert stopped_at < 12, "the run ended before the signal: nothing to resume"
    (checkpoint,) = (run / "checkpoints").glob("step_*")
    first_wall = torch.load(checkpoint / "trainer_state.pt", weights_only=True)["wall_time_s"]
    # `python -m tic_grpo_cli` with the venv's bin not on PATH: the command names the python.
    command = re.search(r"continue with: (\S+(?: -m tic_grpo_cli)? train .*)$", err.strip())
    command = command.group(1)
    assert f"continue with: {command}" in (run / "train.log").read_text()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bin_dir = Path(sys.executable).parent  # where the tic-grpo entry point is installed
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}"}
    done = subprocess.run(command, shell=True, cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.glob("outputs/train/*/*")) == [run] and not any(elsewhere.iterdir())
    assert steps(run) == list(range(1, 13))
    assert steps(run, "eval/accuracy") == [0, 4, 8, 12]
    assert sorted({r["step"] for r in read_jsonl(run / "samples.jsonl")}) == [4, 8, 12]
    summary = json.loads((run / "summary.json").read_text())
    # The whole run's training time: the first session's and at least the resumed one's
    # rollouts and updates.
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r and r["step"] > stopped_at]
    second = {r["rollout"]: r["time/rollout_s"] + r["time/update_s"] for r in rows}
    assert summary["steps"] == 12 and summary["wall_time_s"] >= first_wall + sum(second.values())


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    overrides = [*SMALL_RUN, "trainer.max_steps=12", "trainer.save_every=4", "trainer.eval_every=4"]
    full, killed = kill_and_resume(tmp_path, overrides)
    a = deterministic(read_jsonl(full / "metrics.jsonl"))
    b = deterministic(read_jsonl(killed / "metrics.jsonl"))
    assert a == b


def test_resume_rejects_a_checkpoint_of_another_algorithm(tmp_path):
    train(compose_config(*SMALL_RUN, "trainer.max_steps=2", "trainer.eval_every=0"), tmp_path)
    with pytest.raises(UserError, match=r"algorithm\.name"):
        train(
            compose_config(*SMALL_RUN, "algorithm=grpo", f"resume={tmp_path}"), tmp_path / "other"
        )


def test_missing_resume_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        train(compose_config(*SMALL_RUN, f"resume={tmp_path / 'nope'}"), tmp_path)


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
