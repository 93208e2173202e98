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
from test_train import SMALL, make_cfg

from tic_grpo_cli.cli import main
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.train.loop import train

ENV = {**os.environ, "WANDB_MODE": "disabled"}
SHORT = ["trainer.max_steps=4", "trainer.save_every=2", "trainer.eval_every=0"]


def steps(run: Path, key: str = "loss") -> list[int]:
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if key in r]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 4-step run with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("finished")
    train(make_cfg(*SHORT), run)
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
        train(make_cfg(*SHORT, override, f"resume={finished_run}"), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resume_below_the_checkpoint_step_is_refused(finished_run, tmp_path):
    with pytest.raises(UserError, match=r"trainer\.max_steps=2 is below the checkpoint's step 4"):
        train(make_cfg(*SHORT, "trainer.max_steps=2", f"resume={finished_run}"), tmp_path)


def test_an_incomplete_newest_checkpoint_is_skipped(tmp_path, caplog):
    train(make_cfg(*SHORT, "trainer.keep_last=0"), tmp_path)
    (tmp_path / "checkpoints" / "step_4" / "model.safetensors").unlink()
    train(make_cfg(*SHORT, "trainer.max_steps=6", "resume=auto"), tmp_path)
    assert re.search(
        r"skipping \S*step_4: incomplete \(missing model weights\); resuming from step_2",
        caplog.text,
    )
    assert steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_resume_restores_the_saved_config_and_applies_safe_overrides(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *SMALL, *SHORT, f"hydra.run.dir={run}"]) == 0
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
    assert main(["train", *SMALL, *SHORT, f"hydra.run.dir={run}"]) == 0

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
    overrides = [*SMALL, "trainer.max_steps=12", "trainer.save_every=0"]
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


def test_eval_of_all_checkpoints_draws_a_curve_of_the_kept_ones(tmp_path):
    # Saved at 2, 4, 6, 8; kept: the newest and the first of every 4 steps (2, 4, 8).
    train(make_cfg("trainer.save_every=2", "trainer.eval_every=0", "trainer.keep_last=1",
                   "trainer.keep_every=4"), tmp_path / "run")  # fmt: skip
    from test_evaluate import compose_eval

    from tic_grpo_cli.evaluation.evaluate import evaluate

    cfg = compose_eval(f"checkpoint.path={tmp_path / 'run'}", "checkpoint.all=true", "eval.limit=2")
    results = evaluate(cfg, tmp_path / "eval")
    assert [r["step"] for r in results["results"]] == [2, 4, 8]


def test_printed_commands_call_the_program_the_way_that_works(tmp_path, monkeypatch):
    """`make train` runs .venv/bin/tic-grpo with the venv not on PATH: a hint saying
    `tic-grpo ...` failed with 'command not found' there."""
    from tic_grpo_cli import errors
    from tic_grpo_cli.errors import program

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "tic-grpo"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(errors, "ENTRY_POINT", str(script))  # kept by cli.main
    assert program() == str(script)  # not on PATH: the path it was started by
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert program() == "tic-grpo"  # on PATH and the same file: the short name
    monkeypatch.setattr(errors, "ENTRY_POINT", "/somewhere/tic_grpo_cli/__main__.py")
    assert program() == f"{sys.executable} -m tic_grpo_cli"  # another tic-grpo on PATH


def test_cfg_job_shows_a_resumed_runs_config(tmp_path):
    """`--cfg job resume=<run>` ended in argparse's "unrecognized arguments": the run's saved
    overrides came before the flag and the given ones after it."""
    from tic_grpo_cli.config.resume_argv import resume_argv

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- dataset=chain\n- seed=3\n")
    argv = resume_argv(["--cfg", "job", f"resume={run}", "trainer.max_steps=9"])
    assert argv[:2] == ["--cfg", "job"]
    assert argv[2:5] == ["dataset=chain", "seed=3", f"resume={run}"]
    assert "trainer.max_steps=9" in argv and not any(a.startswith("-") for a in argv[2:])
    out = subprocess.run(
        [sys.executable, "-m", "tic_grpo_cli", "train", "--cfg", "job", f"resume={run}",
         "trainer.max_steps=9"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "kind: chain" in out.stdout and "max_steps: 9" in out.stdout and "seed: 3" in out.stdout
