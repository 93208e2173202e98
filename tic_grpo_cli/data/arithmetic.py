"""The embedded `arithmetic` task: integer problems like ``37+85=`` with exact answers.

Problems are drawn from a seeded generator. Which split a problem belongs to is decided
by a stable hash of its text, not by the draw order, so the train and test splits are
disjoint by construction whatever the sizes and seeds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class Problem:
    question: str  # e.g. "37+85="
    answer: str  # e.g. "122"


def split_of(question: str, test_percent: int = 10) -> str:
    """'test' for a stable ``test_percent`` share of all problems, 'train' for the rest."""
    digest = hashlib.sha256(question.encode()).digest()
    return "test" if int.from_bytes(digest[:4], "big") % 100 < test_percent else "train"


def make_problem(a: int, op: str, b: int) -> Problem:
    return Problem(question=f"{a}{op}{b}=", answer=str(OPERATORS[op](a, b)))


def generate(
    split: str,
    size: int,
    *,
    seed: int = 0,
    digits: int = 2,
    operators: tuple[str, ...] = ("+",),
    test_percent: int = 10,
) -> list[Problem]:
    """``size`` distinct problems of ``split`` ('train' or 'test'), deterministic in ``seed``.

    Operands are uniform in ``[0, 10**digits)``. Raises ValueError when the split holds
    fewer than ``size`` distinct problems.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    unknown = [op for op in operators if op not in OPERATORS]
    if unknown:
        raise ValueError(f"unknown operator(s) {unknown}; allowed: {sorted(OPERATORS)}")
    universe = len(operators) * 10 ** (2 * digits)
    share = test_percent if split == "test" else 100 - test_percent
    if size > universe * share // 100 * 0.9:
        raise ValueError(
            f"{size} {split} problems requested but only about {universe * share // 100} exist "
            f"with digits={digits} and operators={list(operators)}; lower the size or raise digits"
        )
    # The split name salts the seed so train and test draws are independent streams.
    rng = random.Random(f"{seed}:{split}")
    high = 10**digits - 1
    seen: set[str] = set()
    problems: list[Problem] = []
    while len(problems) < size:
        problem = make_problem(rng.randint(0, high), rng.choice(operators), rng.randint(0, high))
        if problem.question in seen or split_of(problem.question, test_percent) != split:
            continue
        seen.add(problem.question)
        problems.append(problem)
    return problems
