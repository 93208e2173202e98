"""Ctrl-C under `tic-grpo train ... 2>&1 | tee log`: the shell's SIGINT ends `tee` too, so
the trainer's stdout and stderr are a pipe nobody reads. The line that continues the run
must still reach train.log, and the exit status must stay 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tic_grpo_cli.runs.files import read_jsonl

SMALL = [
    "trainer.rollout_batch_size=4",
    "trainer.group_size=4",
    "trainer.minibatch_size=2",
    "trainer.eval_every=0",
    "trainer.save_every=0",
    "trainer.log_every=1",
    "trainer.max_steps=100000",
    "wandb.mode=disabled",
    "hardware.num_threads=1",
]


@pytest.mark.parametrize("stderr", ["pipe", "terminal"])  # `2>&1 | tee log`, `| tee log`
def test_ctrl_c_with_a_closed_pipe_logs_the_way_back_and_exits_130(tmp_path, stderr):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    run = tmp_path / "run"
    terminal = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tic_grpo_cli", "train", *SMALL, f"hydra.run.dir={run}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr == "pipe" else terminal,
    )
    deadline = time.time() + 600  # generous: a loaded machine takes minutes to start
    while time.time() < deadline and not any(
        "loss" in r for r in read_jsonl(run / "metrics.jsonl")
    ):
        time.sleep(0.05)
    # What the shell does on Ctrl-C: `tee` dies first, then the trainer gets SIGINT and
    # writes into a pipe with no reader.
    proc.stdout.close()
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=600)
    finally:
        proc.kill()  # a no-op once it has exited
        terminal.close()
    log = (run / "train.log").read_text()
    assert "continue with: " in log and " train resume=" in log, log[-2000:]
    assert code == 130
    assert (run / "checkpoints" / "latest").is_file()
    if stderr == "terminal":  # the line reaches it, and no logging traceback per log line
        shown = (tmp_path / "stderr.txt").read_text()
        assert "continue with: " in shown and "Logging error" not in shown, shown[-2000:]
