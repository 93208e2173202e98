"""The embedded `chain` task: a chain of additions and subtractions, worked step by step.

A problem like ``57+3-8+6=`` asks for every intermediate result written out, left to
right: ``57+3=60,60-8=52,52+6=58``. Each step copies the previous result, reads the next
operator and operand from the prompt and computes, so one wrong token anywhere spoils the
whole answer (the `exact` scorer compares the whole completion): a long-horizon task whose
completions are about 8 tokens per step (a step is at most ``99-9=90,``, 8 characters).

Operands after the first are single digits (1-9) and every intermediate result stays in
[0, 99]: the generator only draws an operator that keeps it there. Which split a problem
belongs to is a stable hash of its text (as in `arithmetic`): a ``test_percent`` share is
test, the next ``validation_percent`` share validation (held out of train for choosing
hyper-parameters), the rest train, so the three splits are disjoint by construction.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")
MAX_VALUE = 99  # intermediate results stay in [0, MAX_VALUE]: at most 2 digits
TOKENS_PER_STEP = 8  # "99-9=90," in a character-level tokenizer


@dataclass(frozen=True)
class ChainProblem:
    start: int
    steps: tuple[tuple[str, int], ...]  # (operator, operand) applied left to right

    @property
    def question(self) -> str:
        return str(self.start) + "".join(f"{op}{b}" for op, b in self.steps) + "="

    @property
    def answer(self) -> str:
        parts, value = [], self.start
        for op, b in self.steps:
            new = value + b if op == "+" else value - b
            parts.append(f"{value}{op}{b}={new}")
            value = new
        return ",".join(parts)


def split_of(question: str, test_percent: int = 10, validation_percent: int = 10) -> str:
    """'test', 'validation' or 'train' for a problem, by a stable hash of its text."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") % 100
    if bucket < test_percent:
        return "test"
    return "validation" if bucket < test_percent + validation_percent else "train"


def max_completion_tokens(chain_length: int) -> int:
    """Longest answer plus EOS, in characters (= tokens of the character-level tokenizer)."""
    return TOKENS_PER_STEP * chain_length


def _draw(rng: random.Random, chain_length: int) -> ChainProblem:
    start = value = rng.randint(0, MAX_VALUE)
    steps = []
    for _ in range(chain_length):
        b = rng.randint(1, 9)
        ops = [op for op, ok in (("+", value + b <= MAX_VALUE), ("-", value - b >= 0)) if ok]
        op = rng.choice(ops)  # b <= 9 < MAX_VALUE, so at least one operator always fits
        value = value + b if op == "+" else value - b
        steps.append((op, b))
    return ChainProblem(start, tuple(steps))


def generate(
    split: str,
    size: int,
    *,
    seed: int = 0,
    chain_length: int = 4,
    test_percent: int = 10,
    validation_percent: int = 10,
) -> list[ChainProblem]:
    """``size`` distinct problems of ``split`` with ``chain_length`` steps each.

    Deterministic in ``seed``. Raises ValueError for an unknown split, a chain_length
    below 1, or a split too small for ``size`` (only chain_length 1 can be that small).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if chain_length < 1:
        raise ValueError(f"chain_length must be >= 1, got {chain_length}")
    rng = random.Random(f"{seed}:chain{chain_length}:{split}")
    seen: set[str] = set()
    problems: list[ChainProblem] = []
    for _ in range(50 * size + 10_000):
        if len(problems) == size:
            return problems
        problem = _draw(rng, chain_length)
        question = problem.question
        if question in seen or split_of(question, test_percent, validation_percent) != split:
            continue
        seen.add(question)
        problems.append(problem)
    if len(problems) == size:
        return problems
    raise ValueError(
        f"only {len(problems)} distinct {split} problems with chain_length={chain_length} "
        f"found, {size} requested; lower the size or raise chain_length"
    )
