"""The math scorer: math-verify, run in a worker process so every verification has a deadline.

math-verify bounds its own work with SIGALRM, which it switches off outside the main thread
(a DataLoader worker, a thread pool), so ``2003^{2002^{2001}}`` could keep sympy busy without
bound; and no alarm interrupts one long C call (a huge integer power). So each verification
runs in a worker process, whose main thread has an interval timer that stops sympy's
Python-level work cheaply, and the caller waits for each verdict with a deadline; a worker
still busy after it (stuck in C) is killed and replaced. A timed-out verdict is wrong and
says so (``timed_out``). The stdlib ProcessPoolExecutor cannot kill one running task before
Python 3.14, hence this small pool of one. It works the same from any thread or DDP rank.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import re
import select
import signal
import struct
import subprocess
import sys
import threading
from dataclasses import astuple, dataclass
from typing import Any

from tic_grpo_cli.data.answers import MINUS_SIGNS, SPACE_SEPARATOR, last_box

# Time the worker gets beyond the timeout to report a Python-level timeout itself before it is
# killed (a kill costs a new worker: ~1 s of start-up and math-verify import).
_GRACE_S = 1.0
_STARTUP_S = 120.0
log = logging.getLogger("tic_grpo")
_WORKER = "from tic_grpo_cli.data.verify import serve; serve"
# Number notation math-verify misreads, rewritten first by the number scorers' rules (answers.py).
# Separators between digit groups other than a comma: it reads `9\,500` as 509, `9{,}500` in text as 9.
_GROUP_SPACE = re.compile(rf"(?<=\d){SPACE_SEPARATOR}(?=\d{{3}}(?!\d))")
# Minus signs: it finds no number after `−` in text. U+2212 is a minus anywhere (`8−3`); a dash
# only as a sign, right before a digit (`3–5` stays a range).
_MINUS = re.compile(rf"\u2212|(?<![\w)\]}}.])[{MINUS_SIGNS}](?=[\d.\\(])")
# In text (in LaTeX it reads them as lists) it takes a comma between digits for a decimal point
# (`75,00` is 75.00) or cuts a number at it (`1,2345` is 1234); a comma that does not separate
# groups of three digits separates list elements, as in a box. Runs inside brackets are tuples.
_COMMA_RUN = re.compile(r"(?<![\w.(\[{])\d+(?:,\d+)+(?:\.\d+)?(?![\w)\]}])")
_GROUPED = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_LATEX_SPAN = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]", re.DOTALL)
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


@dataclass(frozen=True)
class Verdict:
    """One scored completion: `extracted` is the answer text found (None: no answer),
    `normalized` its canonical form, on which verdicts and maj@k votes agree."""

    correct: bool
    extracted: str | None = None
    normalized: str | None = None
    timed_out: bool = False


TIMED_OUT = Verdict(False, timed_out=True)


class _Deadline(BaseException):
    """Raised by the worker's timer; a BaseException so math-verify's handlers of
    Exception do not turn it into a silent "not equal"."""


def _number_notation(text: str) -> str:
    """``text`` with minus signs as ``-`` and digit groups without non-comma separators."""
    return _MINUS.sub("-", _GROUP_SPACE.sub("", text))


def _list_commas(text: str) -> str:
    """Plain text (no LaTeX) with each comma run that is no grouped number made a LaTeX list."""

    def fix(match: re.Match[str]) -> str:
        run = match.group()
        return run if _GROUPED.fullmatch(run) else f"\\({run}\\)"

    return _COMMA_RUN.sub(fix, text)


def math_answer_text(completion: str) -> str | None:
    """What math-verify reads: the last box (as a box) when there is one, else the whole
    completion; None when the last box is unfinished or empty (see answers.last_box).
    Number notation is rewritten first (signs, digit groups, commas: docs/rewards.md)."""
    if _BOX.search(completion):
        box = last_box(completion)
        return None if box is None else f"\\boxed{{{_number_notation(box)}}}"
    text, parts, end = _number_notation(completion), [], 0
    for span in _LATEX_SPAN.finditer(text):
        parts += [_list_commas(text[end : span.start()]), span.group()]
        end = span.end()
    return "".join([*parts, _list_commas(text[end:])])


@functools.lru_cache(maxsize=8192)
def _parse_gold(answer: str) -> list[Any]:
    from math_verify import parse

    answer = _number_notation(answer)
    # A bare reference like `\frac{1}{2}` or `(3,\pi)` needs an anchor to be found at all.
    text = answer if ("\\boxed" in answer or "$" in answer) else f"\\boxed{{{answer}}}"
    return parse(text, parsing_timeout=None) or parse(answer, parsing_timeout=None)


def canonical_math(expr: Any) -> str:
    """One spelling per value for votes: evaluated (``sqrt(12)`` -> ``2*sqrt(3)``), decimals
    as exact rationals (``1.50`` -> ``3/2``), ``x = 5`` as ``5``; sympy's ``str``."""
    import sympy

    if not isinstance(expr, sympy.Basic):
        return str(expr)
    if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
        expr = expr.rhs
    expr = expr.doit()
    floats = expr.atoms(sympy.Float)
    if floats:
        expr = expr.xreplace({f: sympy.Rational(str(f)) for f in floats})
    return str(expr)


def verify_math(completion: str, reference: str) -> Verdict:
    """math-verify's verdict on the completion's final answer against ``reference`` (LaTeX
    or plain). Unbounded in time: call it through `MathVerifier`."""
    from math_verify import parse, verify

    text = math_answer_text(completion)
    gold = _parse_gold(reference)
    pred = parse(text, parsing_timeout=None) if text else []
    if not pred or not gold:
        return Verdict(False)
    extracted = str(pred[1] if len(pred) > 1 else pred[0])
    correct = bool(verify(gold, pred, timeout_seconds=None))
    return Verdict(correct, extracted, canonical_math(pred[0]))


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Deadline


def _write(stream: Any, obj: Any) -> None:
    data = json.dumps(obj).encode()
    stream.write(struct.pack("<I", len(data)) + data)
    stream.flush()


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError("the math-verify worker closed its pipe")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read(fd: int) -> Any:
    (size,) = struct.unpack("<I", _read_exactly(fd, 4))
    return json.loads(_read_exactly(fd, size))


def serve(timeout: float) -> None:
    """The worker process: reads [completion, reference] pairs from stdin, writes verdicts
    to stdout (JSON, length-prefixed), until stdin closes."""
    import math_verify  # noqa: F401  (imported before "ready": start-up is not verification time)

    # Frames go to the original stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    signal.signal(signal.SIGALRM, _on_alarm)
    _write(out, "ready")
    while True:
        try:
            item = _read(0)
        except EOFError:
            return
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            verdict = verify_math(*item)
        except _Deadline:
            verdict = TIMED_OUT
        except Exception:  # an answer math-verify cannot read is wrong
            verdict = Verdict(False)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        _write(out, astuple(verdict))


class MathVerifier:
    """Verifies (completion, reference) pairs with math-verify, each within `timeout`
    seconds (+ a grace second), in one worker process started on first use. Thread-safe."""

    def __init__(self, timeout: float = 5.0):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._owner = os.getpid()
        atexit.register(self.close)

    def __call__(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        """One verdict per pair, in order; a verdict not back in time is `TIMED_OUT`."""
        with self._lock:
            return [self._one(completion, str(reference)) for completion, reference in pairs]

    def _one(self, completion: str, reference: str) -> Verdict:
        if self._owner != os.getpid():
            # A forked child (a DataLoader worker) inherits the parent's pipes: it starts its
            # own worker instead of talking over the parent's.
            self._process, self._owner = None, os.getpid()
        if self._process is None:
            self._start()
        assert self._process is not None and self._process.stdout and self._process.stdin
        try:
            _write(self._process.stdin, (completion, reference))
            if self._ready(self.timeout + _GRACE_S):
                return Verdict(*_read(self._process.stdout.fileno()))
        except (EOFError, BrokenPipeError):  # the worker died (out of memory, a crash)
            log.warning("the math-verify worker died; scoring this answer wrong, restarting")
        self.close()  # stuck in C code (or dead): only a kill stops it
        return TIMED_OUT

    def _ready(self, seconds: float) -> bool:
        assert self._process is not None and self._process.stdout
        return bool(select.select([self._process.stdout], [], [], seconds)[0])

    def _start(self) -> None:
        # A fresh interpreter, not multiprocessing: fork can deadlock a process running torch
        # threads, and spawn re-runs the caller's __main__ (a user's script) in the child.
        self._process = subprocess.Popen(
            [sys.executable, "-c", f"{_WORKER}({self.timeout})"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self._process.stdout is not None
        if not self._ready(_STARTUP_S) or _read(self._process.stdout.fileno()) != "ready":
            self.close()
            raise RuntimeError("the math-verify worker process did not start")

    def close(self) -> None:
        """Stop the worker (a new one starts on the next call)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=5)
            for stream in (self._process.stdin, self._process.stdout):
                if stream is not None:
                    stream.close()
        self._process = None


@functools.cache
def shared_verifier(timeout: float) -> MathVerifier:
    """One worker per process and timeout, shared by every scorer (tasks, eval, score)."""
    return MathVerifier(timeout)
