"""The process's terminal: one rich Console, and the logging handler that prints through it."""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any


@functools.cache
def console() -> Any:
    """The process's one rich Console on stdout: log lines, tables and the progress bar all
    print through it, so a live bar stays below what is printed above it."""
    from rich.console import Console

    return Console()


def console_handler() -> logging.Handler:
    """Rich output on a terminal, plain lines otherwise (CI, pipes, files)."""
    if sys.stdout.isatty():
        from rich.logging import RichHandler

        return RichHandler(console=console(), show_path=False, rich_tracebacks=False, markup=False)
    handler = _PipeHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s", "%H:%M:%S"))
    return handler


class _PipeHandler(logging.StreamHandler):
    """A StreamHandler whose reader may go away: Ctrl-C under `tic-grpo train | tee log`
    ends `tee`, and logging would print a "Logging error" traceback to the terminal for
    every later line. Console lines then go to /dev/null; train.log keeps them all."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            _to_devnull([self.stream])
            return
        super().handleError(record)


def say(line: str) -> None:
    """Print `line` on stderr, surviving a reader that is gone.

    Ctrl-C under `tic-grpo train ... 2>&1 | tee log` ends `tee` as well, so the line that
    follows the signal meets a closed pipe. The BrokenPipeError is swallowed and stdout and
    stderr are pointed at /dev/null: otherwise the interpreter's final flush fails too and
    turns the exit status into 120. Callers write anything that must survive (the command
    that continues a run) to the run's log first.
    """
    try:
        print(line, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):  # ValueError: the stream was closed in-process
        silence_closed_streams()


def silence_closed_streams() -> None:
    """Point stdout and stderr at /dev/null: every later write, the exit flush included,
    succeeds instead of raising BrokenPipeError."""
    _to_devnull([sys.stdout, sys.stderr])


def _to_devnull(streams: list) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in streams:
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):  # no file descriptor (captured, closed)
            continue
    os.close(devnull)
