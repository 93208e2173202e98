"""Rewards: score completions against their examples.

A scorer maps one completion and its example to ``(correct, extracted)``: whether the
answer is right and the answer text it found (None when it found none). A `Rewarder`
turns those into float rewards, adds the optional format term, or calls a user's reward
function instead, and keeps every term for logging.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from tic_grpo_cli.data import countdown
from tic_grpo_cli.errors import UserError

Scorer = Callable[[str, dict[str, Any]], tuple[bool, str | None]]

# A number as people write it: optional sign, thousands commas, decimals.
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_INTEGER = re.compile(r"-?\d+")


@dataclass
class RewardResult:
    rewards: list[float]
    correct: list[bool]
    extracted: list[str | None]
    terms: dict[str, list[float]]  # per-term rewards, e.g. {"correct": [...], "format": [...]}


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text.replace(",", "").rstrip("."))
    except InvalidOperation:
        return None


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, braces matched (``\\boxed{\\frac{1}{2}}``)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i]
            depth -= 1
    return None  # unclosed: a completion cut off by the length limit


def score_exact(completion: str, example: dict[str, Any]) -> tuple[bool, str | None]:
    text = completion.strip()
    return text == str(example["answer"]).strip(), text or None


def score_number(completion: str, example: dict[str, Any]) -> tuple[bool, str | None]:
    """The first integer in the completion equals the answer; text after it is ignored."""
    match = _INTEGER.search(completion)
    if match is None:
        return False, None
    return _decimal(match.group()) == _decimal(str(example["answer"]).strip()), match.group()


def gsm8k_reference(answer: str) -> str | None:
    """GSM8K answers end with ``#### 1,234``; a bare number (verl files) is taken as is."""
    tail = answer.rsplit("####", 1)[-1]
    match = _NUMBER.search(tail)
    return None if match is None else match.group()


def score_gsm8k(completion: str, example: dict[str, Any]) -> tuple[bool, str | None]:
    """The number in the last \\boxed{}, else the first after ``####``, else the last one."""
    boxed = last_boxed(completion)
    if boxed is not None:
        found = _NUMBER.findall(boxed)[:1]
    elif "####" in completion:
        # The first after the first ####: a model that keeps going after its answer often
        # writes (and answers) a new question of its own.
        found = _NUMBER.findall(completion.split("####", 1)[1])[:1]
    else:
        found = _NUMBER.findall(completion)[-1:]
    if not found:
        return False, None
    got, want = _decimal(found[0]), _decimal(gsm8k_reference(str(example["answer"])))
    return got is not None and got == want, found[0]


def _timeout() -> int | None:
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=8192)
def _parse_gold(answer: str) -> list[Any]:
    from math_verify import parse

    # A bare reference like `\frac{1}{2}` or `(3,\pi)` needs an anchor to be found at all.
    text = answer if ("\\boxed" in answer or "$" in answer) else f"\\boxed{{{answer}}}"
    return parse(text, parsing_timeout=_timeout()) or parse(answer, parsing_timeout=_timeout())


def score_math(completion: str, example: dict[str, Any]) -> tuple[bool, str | None]:
    """Symbolic equivalence with math-verify: ``\\boxed{\\frac{1}{2}}`` matches ``0.5``."""
    from math_verify import parse, verify

    gold = _parse_gold(str(example["answer"]))
    pred = parse(completion, parsing_timeout=_timeout())
    if not pred or not gold:
        return False, None
    extracted = str(pred[1] if len(pred) > 1 else pred[0])
    return bool(verify(gold, pred, timeout_seconds=_timeout())), extracted


def score_countdown(completion: str, example: dict[str, Any]) -> tuple[bool, str | None]:
    numbers = example.get("numbers", example.get("nums"))
    target = example.get("target", example["answer"])
    try:
        target = int(target)
    except (TypeError, ValueError):
        return False, None
    return countdown.score(completion, list(numbers or []), target)


SCORERS: dict[str, Scorer] = {
    "exact": score_exact,
    "number": score_number,
    "gsm8k": score_gsm8k,
    "math": score_math,
    "countdown": score_countdown,
}


def score_auto(completion: str, example: dict[str, Any]) -> tuple[bool, str | None]:
    """For Hugging Face data: by the row's verl `data_source`, else by the answer's shape."""
    source = str(example.get("data_source") or "").lower()
    if "gsm8k" in source or "####" in str(example["answer"]):
        return score_gsm8k(completion, example)
    if "countdown" in source:
        return score_countdown(completion, example)
    return score_math(completion, example)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def load_reward_fn(spec: str) -> Callable[..., Any]:
    """Import ``package.module:function``; the working directory is searched too, so a
    ``my_rewards.py`` beside the run needs no install."""
    module_name, _, name = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise UserError(
            f"dataset.reward.fn: cannot import {module_name!r} ({_one_line(err)}); "
            "install it or run from the directory that holds it"
        ) from err
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"dataset.reward.fn: module {module_name!r} has no function {name!r}")
    return fn


def call_reward_fn(
    fn: Callable[..., Any], spec: str, completions: list[str], examples: Sequence[dict[str, Any]]
) -> list[float]:
    """fn(completions, **fields), one list per example field (TRL's convention)."""
    fields = {key: [ex.get(key) for ex in examples] for key in examples[0]} if examples else {}
    try:
        values = list(fn(completions, **fields))
    except Exception as err:
        raise UserError(f"reward function {spec} failed: {_one_line(err)}") from err
    if len(values) != len(completions):
        raise UserError(
            f"reward function {spec} returned {len(values)} values for "
            f"{len(completions)} completions; return one float per completion"
        )
    for i, value in enumerate(values):
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise UserError(
                f"reward function {spec} returned {value!r} for completion {i}; "
                "rewards must be finite numbers"
            )
    return [float(v) for v in values]


class Rewarder:
    """Scores a batch: reward = correct (or the user function) + format_weight * format."""

    def __init__(self, reward_cfg: Any, default_scorer: str):
        name = default_scorer if reward_cfg.scorer == "auto" else reward_cfg.scorer
        self.scorer: Scorer = score_auto if name == "auto" else SCORERS[name]
        self.fn_spec: str | None = reward_cfg.fn
        self.fn = load_reward_fn(reward_cfg.fn) if reward_cfg.fn else None
        pattern = reward_cfg.format_pattern
        self.format = re.compile(pattern, re.DOTALL) if pattern else None
        self.format_weight = float(reward_cfg.format_weight)

    def __call__(self, completions: list[str], examples: Sequence[dict[str, Any]]) -> RewardResult:
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
        if self.fn is not None:
            values = call_reward_fn(self.fn, str(self.fn_spec), completions, examples)
            correct = [v >= 1.0 for v in values]
            extracted: list[str | None] = [None] * len(values)
        else:
            scored = [self.scorer(c, ex) for c, ex in zip(completions, examples, strict=True)]
            correct = [ok for ok, _ in scored]
            extracted = [found for _, found in scored]
            values = [float(ok) for ok in correct]
        terms = {"correct": values}
        rewards = list(values)
        if self.format is not None:
            terms["format"] = [float(self.format.search(c) is not None) for c in completions]
            rewards = [
                r + self.format_weight * f for r, f in zip(rewards, terms["format"], strict=True)
            ]
        return RewardResult(rewards=rewards, correct=correct, extracted=extracted, terms=terms)
