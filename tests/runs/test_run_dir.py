"""Every run gets its own run dir, guarded against a second live writer, and a command that
fails before it writes results leaves no run dir behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.runs.run_dir import LOCK_FILE, RunLock

TINY_RUN = [
    "trainer.max_steps=2", "trainer.rollout_batch_size=4", "trainer.group_size=4",
    "trainer.minibatch_size=2", "trainer.eval_every=0", "trainer.save_every=0",
    "wandb.mode=disabled", "hardware.num_threads=1",
]  # fmt: skip
ENV = {**os.environ, "WANDB_MODE": "disabled"}
HOLD = """
import sys, time
from tic_grpo_cli.runs.run_dir import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def default_sigint() -> None:
    """Give a child SIGINT's default disposition, as a user's terminal does: a suite started
    in the background (CI, `cmd &`) inherits SIGINT ignored, and Python then keeps it
    ignored, so Ctrl-C during start-up would not reach the program at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tic_grpo_cli", *args], cwd=cwd, env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
    )  # fmt: skip


def holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding the run dir's lock, as a live run does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True, env=ENV)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_run_dirs_of_two_processes_differ_within_the_same_second(monkeypatch):
    cfg = compose_config(hydra=True)
    # One clock for both: the time alone no longer names the dir.
    OmegaConf.register_new_resolver("now", lambda pattern: "same-second", replace=True)
    dirs = []
    for pid in (4242, 4343):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        dirs.append(OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"])
    assert dirs[0] != dirs[1], dirs


def test_two_runs_started_together_write_their_own_dirs(tmp_path):
    procs = [cli("train", *TINY_RUN, cwd=tmp_path) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    runs = sorted(tmp_path.glob("outputs/train/*/*"))
    assert len(runs) == 2
    for run in runs:
        rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
        assert [r["step"] for r in rows] == [1, 2]
        assert not (run / LOCK_FILE).exists()  # a finished run leaves no lock behind


def test_a_finished_eval_leaves_no_lock_in_its_dir(tmp_path):
    proc = cli("eval", "eval.limit=4", "hardware.num_threads=1", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    (run,) = tmp_path.glob("outputs/eval/*/*")
    assert (run / "metrics.jsonl").is_file() and not (run / LOCK_FILE).exists()


def test_a_second_process_cannot_lock_a_held_run_dir(tmp_path, caplog):
    proc = holder(tmp_path)
    try:
        with pytest.raises(UserError) as err:
            RunLock(tmp_path).acquire()
        message = str(err.value)
        assert str(tmp_path) in message and f"pid {proc.pid} on {socket.gethostname()}" in message
    finally:
        proc.kill()
        proc.wait()
    # The kernel dropped the dead holder's flock: the next run takes the dir over, saying so.
    lock = RunLock(tmp_path)
    lock.acquire()
    assert f"pid {proc.pid}" in caplog.text and "no longer running" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()  # released: nothing left to say who held it


def test_a_lock_file_removed_while_waited_on_is_not_locked_twice(tmp_path):
    """A second process that opened run.lock before its holder removed it, then got the
    flock of the unlinked file, must not count as holding the dir: a third one would lock
    the new file and two would write into one dir."""
    first = RunLock(tmp_path)
    first.acquire()
    stale = os.open(tmp_path / LOCK_FILE, os.O_RDWR)  # opened while first holds it
    first.release()
    second = RunLock(tmp_path)
    real_open = os.open
    opened = []

    def open_stale_first(path, *args):  # the second process's open came before the unlink
        opened.append(path)
        return os.dup(stale) if len(opened) == 1 else real_open(path, *args)

    try:
        os.open = open_stale_first
        second.acquire()
    finally:
        os.open = real_open
        os.close(stale)
    assert len(opened) == 2  # the stale file was dropped for the one at the path
    with pytest.raises(UserError, match="in use by"):
        RunLock(tmp_path).acquire()
    second.release()


def test_train_on_a_run_dir_in_use_stops_before_writing_into_it(tmp_path):
    run_dir = tmp_path / "run"
    proc = holder(run_dir)
    try:
        second = cli("train", *TINY_RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        _, err = second.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert second.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: run dir {run_dir} is in use by pid")
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # no .hydra, no train.log


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.lr=-1", "trainer.lr"),  # a bad value, found before anything loads
        ("resume=/no/such/run", "does not exist"),  # found once training sets up
        ("dataset=jsonl dataset.path=/no/such.jsonl", "dataset.path"),  # a missing file
    ],
)
def test_a_command_failing_before_training_leaves_no_run_dir(tmp_path, override, key):
    proc = cli("train", *TINY_RUN, *override.split(), cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and key in err and "Traceback" not in err
    assert not (tmp_path / "outputs").exists(), list(tmp_path.rglob("*"))


def test_ctrl_c_while_starting_up_ends_with_one_line_and_leaves_no_run_dir(tmp_path):
    """SIGINT as soon as the run dir exists: torch, the data and the model are still loading."""
    proc = cli("train", *TINY_RUN, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("outputs/train/*/*")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted"]
    assert not (tmp_path / "outputs").exists(), list(tmp_path.rglob("*"))
