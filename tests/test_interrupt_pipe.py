"""Ctrl-C under `tic-grpo train ... 2>&1 | tee log`: the shell's SIGINT ends `tee` too, so
the trainer's stdout and stderr are a pipe nobody reads. The line that continues the run
must still reach train.log, and the exit status must stay 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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


def test_ctrl_c_with_a_closed_pipe_logs_the_way_back_and_exits_130(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tic_grpo_cli", "train", *SMALL, f"hydra.run.dir={tmp_path}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # 2>&1 | tee
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(
        "loss" in r for r in read_jsonl(tmp_path / "metrics.jsonl")
    ):
        time.sleep(0.05)
    # What the shell does on Ctrl-C: `tee` dies first, then the trainer gets SIGINT and
    # writes into a pipe with no reader.
    proc.stdout.close()
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=120)
    log = (tmp_path / "train.log").read_text()
    assert "continue with: " in log and " train resume=" in log, log[-2000:]
    assert code == 130
    assert (tmp_path / "checkpoints" / "latest").is_file()
