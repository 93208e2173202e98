"""Live training progress: a rich bar on a terminal, a plain heartbeat line everywhere else.

On a terminal the bar shows step / total, the latest train reward, the latest eval accuracy,
tokens/s, elapsed time and ETA; log lines and sample tables print above it because the log
handler and the bar share one rich Console (`runtime.console.console()`). Off a terminal (CI, a log
file, a sweep's worker process) the same facts go out as one `progress:` log line at least
every `heartbeat_s` seconds, from a timer thread so a long evaluation or checkpoint cannot
silence it, and whenever the loop asks (`beat()`, at every `trainer.log_every`).

Only one process draws: the trainer passes `enabled=False` on every rank but 0.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tic_grpo_cli.runtime import console as terminal

log = logging.getLogger("tic_grpo")

HEARTBEAT_S = 30.0
# The bar's optional fields, most useful first, with their widest text ("eval acc 0.334");
# a narrow terminal drops them from the end, then the elapsed time, never step i/N or ETA.
FIELD_WIDTHS = {"stale": 8, "reward": 12, "eval_acc": 14, "tok/s": 12}
ELAPSED_WIDTH = len(" | elapsed 0:00:00")  # two columns and their spaces
MIN_BAR = 10


def format_duration(seconds: float | None) -> str:
    """`1:02:03` / `4:05` for a duration in seconds; `?` when unknown (no step done yet)."""
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def live_display_possible() -> bool:
    """A live bar only when stdout is a terminal and this is the main process: a parallel
    launcher's workers share the terminal, and two live bars would overwrite each other."""
    return sys.stdout.isatty() and multiprocessing.parent_process() is None


class TrainProgress:
    """Progress of one training run from `start_step` (0, or the resumed step) to `total`.

    Use as a context manager around the loop and call `update(step, ...)` after every
    optimizer step. ETA = steps left x the mean time per step taken in this process (a
    resumed run's earlier steps are not timed here).
    """

    def __init__(
        self,
        total: int,
        start_step: int = 0,
        *,
        enabled: bool = True,
        live: bool | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        clock: Callable[[], float] = time.monotonic,
        staleness: int = 0,
    ) -> None:
        self.total = total
        self.start_step = self.step = start_step
        self.enabled = enabled
        self.live = enabled and (live_display_possible() if live is None else live)
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.facts: dict[str, float | None] = {"reward": None, "eval_acc": None, "tok/s": None}
        if staleness:  # shown only when the run trains on stale rollouts
            self.facts = {"stale": float(staleness), **self.facts}
        self._started = self._last_beat = clock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._bar: Any = None
        self._task: Any = None
        # The fields the bar has room for (_fit), of those this run shows.
        self._fields = {k: w for k, w in FIELD_WIDTHS.items() if k in self.facts}
        self._shown = list(self._fields)

    # ------------------------------------------------------------------ figures

    def elapsed(self) -> float:
        return self.clock() - self._started

    def eta(self) -> float | None:
        """Seconds left at the mean pace of the steps done in this process; None before one."""
        done = self.step - self.start_step
        if done <= 0:
            return None
        return self.elapsed() / done * max(0, self.total - self.step)

    def line(self) -> str:
        """The heartbeat line: `step 12/60 (20%) | reward 0.410 | ... | ETA 4:08`."""
        percent = 100 * self.step / max(self.total, 1)
        parts = [f"step {self.step}/{self.total} ({percent:.0f}%)"]
        for label, value in self.facts.items():
            if value is not None:
                whole = label in ("tok/s", "stale")
                parts.append(f"{label} {value:.0f}" if whole else f"{label} {value:.3f}")
        parts.append(f"elapsed {format_duration(self.elapsed())}")
        parts.append(f"ETA {format_duration(self.eta())}")
        return " | ".join(parts)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> TrainProgress:
        if not self.enabled:
            return self
        self._started = self._last_beat = self.clock()
        if self.live:
            self._start_bar()
        else:
            self._timer = threading.Thread(target=self._beat_loop, name="heartbeat", daemon=True)
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
            self._timer = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def update(
        self,
        step: int,
        *,
        reward: float | None = None,
        eval_accuracy: float | None = None,
        tokens_per_s: float | None = None,
    ) -> None:
        """Record the step just finished; a None figure keeps its previous value."""
        self.step = step
        figures = (("reward", reward), ("eval_acc", eval_accuracy), ("tok/s", tokens_per_s))
        for label, value in figures:
            # None or NaN (no evaluation yet): keep what was shown.
            if value is not None and not math.isnan(value):
                self.facts[label] = float(value)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, facts=self._facts_text())

    def beat(self) -> None:
        """One heartbeat line now (off a terminal; on one the bar already shows it)."""
        if self.enabled and not self.live:
            self._last_beat = self.clock()
            log.info("progress: %s", self.line())

    def _beat_loop(self) -> None:
        # `heartbeat_s` after the last line, whoever wrote it (this timer or the loop's beat).
        while not self._stop.wait(max(0.0, self._last_beat + self.heartbeat_s - self.clock())):
            if self.clock() - self._last_beat >= self.heartbeat_s:
                self.beat()

    # ------------------------------------------------------------------ the rich bar

    def _fit(self, width: int) -> tuple[int, bool]:
        """Lay the bar out in `width` columns: step i/N, a bar of MIN_BAR to 40 columns and
        the ETA always; the fields of FIELD_WIDTHS while they fit, then the elapsed time.
        Sets the fields shown; returns (bar width, whether the elapsed time is shown)."""
        # "step", "i/N", "| ETA", "0:00:00" and the spaces between the six columns.
        # One column spare: a line as wide as the terminal wraps in some terminals.
        room = width - 1 - (4 + 2 * len(str(self.total)) + 1 + 5 + 7 + 6) - MIN_BAR
        self._shown = []
        for key, needed in self._fields.items():
            needed += 3 if self._shown else 0  # " | " between fields
            if needed > room:
                break
            self._shown.append(key)
            room -= needed
        elapsed = room >= ELAPSED_WIDTH
        room -= ELAPSED_WIDTH if elapsed else 0
        return MIN_BAR + min(max(room, 0), 40 - MIN_BAR), elapsed

    def _facts_text(self) -> str:
        labels = {"stale": "stale", "reward": "reward", "eval_acc": "eval acc", "tok/s": "tok/s"}
        parts = []
        for key, value in self.facts.items():
            if value is not None and key in self._shown:
                shown = f"{value:.0f}" if key in ("tok/s", "stale") else f"{value:.3f}"
                parts.append(f"{labels[key]} {shown}")
        return " | ".join(parts)

    def _start_bar(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        term = terminal.console()
        bar_width, with_elapsed = self._fit(term.width)
        elapsed = [TextColumn("| elapsed"), TimeElapsedColumn()] if with_elapsed else []
        self._bar = Progress(
            TextColumn("step"),
            MofNCompleteColumn(),
            BarColumn(bar_width=bar_width),
            TextColumn("{task.fields[facts]}"),
            *elapsed,
            TextColumn("| ETA"),
            TimeRemainingColumn(),
            console=term,
            transient=True,
            # A step takes seconds: redraw slowly, it costs the trainer nothing.
            refresh_per_second=2,
        )
        self._task = self._bar.add_task(
            "train", total=self.total, completed=self.step, facts=self._facts_text()
        )
        self._bar.start()


# Shown on the console, in this order, when present in a row.
CONSOLE_KEYS = (
    ("reward/mean", "reward", "{:.3f}"),
    ("accuracy", "acc", "{:.3f}"),
    ("eval/accuracy", "eval_acc", "{:.3f}"),
    ("clip_fraction", "clip", "{:.3f}"),
    ("ratio/max", "ratio_max", "{:.3f}"),
    ("loss", "loss", "{:+.4f}"),
    ("grad_norm", "gnorm", "{:.3f}"),
    ("completion_length/mean", "len", "{:.1f}"),
    ("throughput/tokens_per_s", "tok/s", "{:.0f}"),
)


def format_row(row: dict[str, Any]) -> str:
    parts = [f"step {row['step']}"]
    for key, label, fmt in CONSOLE_KEYS:
        if key in row and row[key] is not None:
            parts.append(f"{label} {fmt.format(row[key])}")
    return " | ".join(parts)


def print_samples(samples: list[dict[str, Any]], step: int) -> None:
    """A few completions as a table on a terminal, as lines otherwise."""
    if not sys.stdout.isatty():
        for s in samples:
            log.info(
                "sample step %d | %r -> %r | reward %.2f adv %+.2f",
                step,
                s["prompt"][-60:],
                s["completion"][:60],
                s["reward"],
                s["advantage"],
            )
        return
    from rich.table import Table

    table = Table(title=f"samples at step {step}")
    for column in ("prompt", "completion", "reward", "advantage"):
        table.add_column(column)
    for s in samples:
        table.add_row(
            s["prompt"][-60:], s["completion"][:60], f"{s['reward']:.2f}", f"{s['advantage']:+.2f}"
        )
    terminal.console().print(table)
