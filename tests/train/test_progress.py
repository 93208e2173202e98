"""Live training progress: the rich bar on a terminal, the heartbeat line off one (issue 19).

Before, a terminal got a log line every `log_every` steps and nothing between, and a log file
the same: none of these tests could pass on that code (there was no progress at all).
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from rich.console import Console

from tests.conftest import compose_config
from tic_grpo_cli.runtime import console as terminal
from tic_grpo_cli.train import progress
from tic_grpo_cli.train.progress import TrainProgress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "seconds,text", [(None, "?"), (0, "0:00"), (59.6, "1:00"), (754, "12:34"), (3723, "1:02:03")]
)
def test_durations_read_as_clock_times(seconds, text):
    assert format_duration(seconds) == text


def test_heartbeat_line_has_step_total_figures_and_eta():
    clock = FakeClock()
    bar = TrainProgress(40, enabled=True, live=False, clock=clock)
    assert bar.eta() is None  # no step timed yet
    clock.now += 20
    bar.update(10, reward=0.5, eval_accuracy=float("nan"), tokens_per_s=812.4)
    # 20 s for 10 steps -> 2 s a step, 30 steps left -> 60 s.
    assert bar.line() == ("step 10/40 (25%) | reward 0.500 | tok/s 812 | elapsed 0:20 | ETA 1:00")
    clock.now += 10
    bar.update(15, eval_accuracy=0.25)  # figures not given keep their last value
    assert bar.line() == (
        "step 15/40 (38%) | reward 0.500 | eval_acc 0.250 | tok/s 812 | elapsed 0:30 | ETA 0:50"
    )


def test_a_resumed_run_times_only_its_own_steps():
    clock = FakeClock()
    bar = TrainProgress(200, start_step=100, live=False, clock=clock)
    clock.now += 50
    bar.update(110)
    assert bar.eta() == pytest.approx(50 / 10 * 90)  # not 50 / 110 * 90


def test_off_a_terminal_a_timer_writes_a_heartbeat_between_steps(caplog):
    # A step (or an evaluation) longer than the heartbeat must not silence the run.
    with (
        caplog.at_level(logging.INFO, logger="tic_grpo"),
        TrainProgress(10, live=False, heartbeat_s=0.05) as bar,
    ):
        bar.update(1, reward=0.5)
        time.sleep(0.5)
    beats = [r.message for r in caplog.records if r.message.startswith("progress: step 1/10")]
    assert len(beats) >= 3


def test_the_loop_can_ask_for_a_beat_and_other_ranks_stay_silent(caplog):
    with caplog.at_level(logging.INFO, logger="tic_grpo"):
        with TrainProgress(10, live=False, heartbeat_s=60) as bar:
            bar.update(2)
            bar.beat()
        with TrainProgress(10, enabled=False, live=False, heartbeat_s=0.01) as other:
            other.update(2)
            other.beat()
            time.sleep(0.1)
    assert [r.message[:20] for r in caplog.records] == ["progress: step 2/10 "]


def test_no_live_bar_off_a_terminal_or_in_a_launcher_worker(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert not progress.live_display_possible()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert progress.live_display_possible()
    # A joblib/loky worker of the parallel launcher shares the terminal with its siblings.
    monkeypatch.setattr(progress.multiprocessing, "parent_process", lambda: object())
    assert not progress.live_display_possible()


def test_on_a_terminal_the_bar_shows_the_figures_below_the_log_lines(monkeypatch):
    out = io.StringIO()
    term = Console(file=out, force_terminal=True, width=140, color_system=None)
    monkeypatch.setattr(terminal, "console", lambda: term)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    # Log records go through the bar's console, so rich prints them above the bar.
    assert terminal.console_handler().console is term
    with TrainProgress(40, live=True) as bar:
        bar.update(10, reward=0.5, eval_accuracy=0.25, tokens_per_s=800)
        term.print("a log line")
        bar._bar.refresh()
    text = out.getvalue()
    assert "a log line" in text
    drawn = text[text.index("a log line") :]  # the bar is redrawn under what was printed
    for piece in ("step", "10/40", "reward 0.500", "eval acc 0.250", "tok/s 800", "ETA"):
        assert piece in drawn, piece


def test_training_off_a_terminal_beats_at_every_log_every(tmp_path, caplog):
    from tic_grpo_cli.train.loop import train

    cfg = compose_config(
        "trainer.max_steps=4", "trainer.rollout_batch_size=2", "trainer.group_size=2",
        "trainer.minibatch_size=1", "trainer.eval_every=0", "trainer.eval_limit=4",
        "trainer.log_every=2", "trainer.log_samples_every=0", "trainer.save_every=0",
        "wandb.mode=disabled", "hardware.num_threads=1",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="tic_grpo"):
        train(cfg, tmp_path)
    beats = [r.message.split(" |")[0] for r in caplog.records if r.message.startswith("progress:")]
    assert beats == ["progress: step 2/4 (50%)", "progress: step 4/4 (100%)"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script")
def test_a_real_terminal_shows_the_bar(tmp_path):
    command = (
        f"{sys.executable} -m tic_grpo_cli train trainer.max_steps=8 trainer.eval_every=0 "
        f"trainer.log_every=0 trainer.log_samples_every=0 wandb.mode=disabled "
        f"hydra.run.dir={tmp_path / 'run'}"
    )
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    out = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True, text=True, timeout=300, env={**env, "COLUMNS": "120"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:]
    assert "step" in out.stdout and "/8" in out.stdout and "ETA" in out.stdout
    assert "progress: step" not in out.stdout  # the heartbeat line is for logs, not terminals


@pytest.mark.parametrize(
    "width,shown,dropped",
    [
        (200, ["reward 0.258", "eval acc 0.334", "tok/s 1352", "elapsed"], []),
        (80, ["reward 0.258", "eval acc 0.334"], ["tok/s", "elapsed"]),
        (40, [], ["reward", "eval acc", "tok/s", "elapsed"]),
    ],
)
def test_a_narrow_terminal_keeps_step_bar_and_eta(monkeypatch, width, shown, dropped):
    """At 80 columns the bar used to end `step  9… ━━╸ reward 0.258 | ... | ETA 0:0…`."""
    term = Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)
    monkeypatch.setattr(terminal, "console", lambda: term)
    with TrainProgress(60, live=True) as bar:
        bar.update(9, reward=0.258, eval_accuracy=0.334, tokens_per_s=1352)
        drawn = Console(file=io.StringIO(), width=width, color_system=None)
        drawn.print(bar._bar.get_renderable())
    (line,) = drawn.file.getvalue().splitlines()
    assert len(line) < width and "…" not in line, line
    assert re.match(r"step  9/60 ━[━╸ ]{10}", line), line  # a bar of >= 10 columns
    assert re.search(r"\| ETA (-:--:--|\d:\d\d:\d\d)$", line), line
    for piece in shown:
        assert piece in line, line
    for piece in dropped:
        assert piece not in line, line
