"""The one exception type users see as a single line instead of a traceback, and the
"did you mean" hint such a line carries for a misspelt name."""

from __future__ import annotations

import difflib
import os
import shutil
import signal
import sys
from pathlib import Path


class UserError(Exception):
    """Bad input (config, file, checkpoint): the message names the culprit and a hint."""


class Interrupted(UserError):
    """A run stopped by SIGINT/SIGTERM after saving a checkpoint: a sweep stops with it.
    `where` says where it stopped, without the command that continues a single run. Not an
    error: the process exits 128 + the signal's number (130 for SIGINT, 143 for SIGTERM),
    as a shell reports a command its signal ended."""

    def __init__(self, message: str, where: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.where = where or message
        self.exit_code = 128 + int(signum)


def suggest(word: str, options: list[str], n: int = 3) -> list[str]:
    """The closest spellings of `word` among `options`, best first.

    An option that `word` starts with, or that starts with `word`, comes first (`tic_grpo`
    -> `tic`, `smol` -> `smollm2_135m`); then difflib's matches within 0.1 of the best ratio,
    so `max_step` gets `max_steps` and not every `*_steps`.
    """
    prefixed = [o for o in options if word.startswith(o) or o.startswith(word)]
    scored = sorted(
        ((difflib.SequenceMatcher(None, word, o).ratio(), o) for o in options), reverse=True
    )
    best = scored[0][0] if scored else 0.0
    close = [o for ratio, o in scored if ratio >= max(0.6, best - 0.1)]
    return list(dict.fromkeys(prefixed + close))[:n]


def did_you_mean(close: list[str]) -> str:
    """`; did you mean a or b?`, or an empty string when nothing is close."""
    return f"; did you mean {' or '.join(close)}?" if close else ""


# The path this process was started by, kept by cli.main before it renames sys.argv[0]
# for Hydra ("tic-grpo train"): what program() looks at.
ENTRY_POINT = ""


def program() -> str:
    """How a printed command (the one that continues a run or a sweep) should call this
    program so that pasting it works: `tic-grpo` when that name on PATH is this program (an
    activated venv, a pip install); else the entry point's absolute path (`make train` runs
    `.venv/bin/tic-grpo` with the venv not on PATH); else `<python> -m tic_grpo_cli`."""
    argv0 = ENTRY_POINT or (sys.argv[0] if sys.argv else "")
    on_path = shutil.which("tic-grpo")
    if Path(argv0).name == "tic-grpo":
        if on_path and os.path.samefile(on_path, argv0):
            return "tic-grpo"
        return str(Path(argv0).absolute())
    if on_path and Path(on_path).parent == Path(sys.executable).parent:
        return "tic-grpo"  # `python -m tic_grpo_cli` of the same environment
    return f"{sys.executable} -m tic_grpo_cli"
