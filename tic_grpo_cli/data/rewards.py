"""Rewards: score completions against their examples.

A scorer maps one completion and its example to a `Verdict`: whether the answer is right,
the answer text it found (`extracted`, None when there is none) and that answer's canonical
form (`normalized`), the one spelling verdicts and maj@k votes use. The extraction rules are
in `answers` (numbers, boxes) and `verify` (math-verify, bounded in time); docs/rewards.md
states them and tests/data/reward_corpus.yaml pins them.

A `Rewarder` turns verdicts into rewards: the correctness term (or a user function that
replaces it), an optional format term and any number of weighted user terms, keeping each
term for logging as ``reward/<name>``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tic_grpo_cli.data import answers, countdown
from tic_grpo_cli.data.reward_fns import RewardFn
from tic_grpo_cli.data.verify import MathVerifier, Verdict, shared_verifier
from tic_grpo_cli.errors import UserError

Scorer = Callable[[str, dict[str, Any]], Verdict]
log = logging.getLogger("tic_grpo")


@dataclass
class RewardResult:
    rewards: list[float]
    correct: list[bool]
    extracted: list[str | None]
    normalized: list[str | None]
    timed_out: list[bool]
    # Per-completion values logged as reward/<name>: each term unweighted ("correct" or the
    # user function replacing it, "format", each of dataset.reward.fns) and, for the math
    # and auto scorers, "timed_out" (1: the verification ran out of time).
    terms: dict[str, list[float]]


def _number_verdict(found: tuple[str, Fraction] | None, want: Fraction | None) -> Verdict:
    if found is None:
        return Verdict(False)
    text, value = found
    return Verdict(want is not None and value == want, text, answers.canonical(value))


def score_exact(completion: str, example: dict[str, Any]) -> Verdict:
    """The stripped completion equals the stripped answer."""
    text = completion.strip()
    return Verdict(text == str(example["answer"]).strip(), text or None, text or None)


def score_number(completion: str, example: dict[str, Any]) -> Verdict:
    """The first number in the completion equals the answer; text after it is ignored."""
    want = answers.parse_number(str(example["answer"]))
    return _number_verdict(answers.first_number(completion), want)


def gsm8k_reference(answer: str) -> Fraction | None:
    """GSM8K answers end with ``#### 1,234``; a bare number (verl files) is taken as is."""
    return answers.parse_number(answer.rsplit("####", 1)[-1])


def score_gsm8k(completion: str, example: dict[str, Any]) -> Verdict:
    """The completion's final number (`answers.final_number`) equals the reference's."""
    want = gsm8k_reference(str(example["answer"]))
    return _number_verdict(answers.final_number(completion), want)


def score_countdown(completion: str, example: dict[str, Any]) -> Verdict:
    numbers = example.get("numbers", example.get("nums"))
    target = example.get("target", example["answer"])
    try:
        target = int(target)
    except (TypeError, ValueError):
        return Verdict(False)
    correct, expression = countdown.score(completion, list(numbers or []), target)
    normalized = None if expression is None else re.sub(r"\s+", "", expression)
    return Verdict(correct, expression, normalized)


# Scorers that need no time limit: our own parsing, linear in the completion's length.
LOCAL_SCORERS: dict[str, Scorer] = {
    "exact": score_exact,
    "number": score_number,
    "gsm8k": score_gsm8k,
    "countdown": score_countdown,
}
SCORER_NAMES = (*LOCAL_SCORERS, "math")


def auto_scorer(example: dict[str, Any]) -> str:
    """For Hugging Face data: by the row's verl `data_source`, else by the answer's shape."""
    source = str(example.get("data_source") or "").lower()
    if "gsm8k" in source or "####" in str(example["answer"]):
        return "gsm8k"
    if "countdown" in source:
        return "countdown"
    return "math"


def score_all(
    scorer: str,
    completions: Sequence[str],
    examples: Sequence[dict[str, Any]],
    verifier: MathVerifier,
) -> list[Verdict]:
    """One verdict per (completion, example) with `scorer` (``auto``: per row, see
    `auto_scorer`); math rows go to `verifier` in one batch."""
    names = [auto_scorer(ex) if scorer == "auto" else scorer for ex in examples]
    verdicts: list[Verdict | None] = [None] * len(names)
    math_rows = []
    for i, name in enumerate(names):
        if name == "math":
            math_rows.append(i)
        else:
            verdicts[i] = LOCAL_SCORERS[name](completions[i], examples[i])
    pairs = [(completions[i], str(examples[i]["answer"])) for i in math_rows]
    for i, verdict in zip(math_rows, verifier(pairs), strict=True):
        verdicts[i] = verdict
    return [v for v in verdicts if v is not None]


class Rewarder:
    """Scores a batch. reward = correct (or dataset.reward.fn's value)
    + format_weight * format + sum_i weights[i] * fns[i]."""

    def __init__(self, reward_cfg: Any, default_scorer: str, prefix: str = "dataset.reward"):
        """`reward_cfg`: a RewardConfig node, checked by config.validate_reward; `prefix`
        names it in errors. Raises UserError when a function cannot be imported."""
        self.scorer = default_scorer if reward_cfg.scorer == "auto" else reward_cfg.scorer
        self.verifier = shared_verifier(float(reward_cfg.verify_timeout))
        self.fn = RewardFn(reward_cfg.fn, f"{prefix}.fn") if reward_cfg.fn else None
        self.fns = [RewardFn(spec, f"{prefix}.fns") for spec in reward_cfg.fns or []]
        weights = reward_cfg.weights
        self.weights = [1.0] * len(self.fns) if weights is None else [float(w) for w in weights]
        self.prefix = prefix
        self.threshold = reward_cfg.correct_threshold
        pattern = reward_cfg.format_pattern
        self.format = re.compile(pattern, re.DOTALL) if pattern else None
        self.format_weight = float(reward_cfg.format_weight)
        self.term_names = self._term_names()
        if self.fn is not None:
            log.info("accuracy: %s", self.accuracy_source())

    def _term_names(self) -> list[str]:
        names = [self.fn.name if self.fn else "correct", "format"]
        names += [f.name if f.name not in names else f.spec for f in self.fns]
        if len(set(names)) != len(names):
            raise UserError(f"{self.prefix}.fns: a function is listed twice ({names[2:]})")
        return names

    def accuracy_source(self) -> str:
        """What `correct` (hence accuracy) means with a user function, in one line."""
        if self.fn is None:
            return f"the {self.scorer} scorer's verdict"
        if self.threshold is not None:
            return f"{self.fn.spec} >= {self.threshold} ({self.prefix}.correct_threshold)"
        return (
            f"the 'correct' list {self.fn.spec} returns, else the {self.scorer} scorer's "
            f"verdict (set {self.prefix}.correct_threshold to judge by the reward instead)"
        )

    def __call__(self, completions: list[str], examples: Sequence[dict[str, Any]]) -> RewardResult:
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
        verdicts = score_all(self.scorer, completions, examples, self.verifier)
        correct = [v.correct for v in verdicts]
        terms: dict[str, list[float]] = {}
        if self.fn is not None:
            out = self.fn(completions, examples)
            terms[self.term_names[0]] = out.values
            if out.correct is not None:
                correct = out.correct
            elif self.threshold is not None:
                correct = [v >= self.threshold for v in out.values]
        else:
            terms["correct"] = [float(ok) for ok in correct]
        rewards = list(terms[self.term_names[0]])
        if self.format is not None:
            terms["format"] = [float(self.format.search(c) is not None) for c in completions]
            rewards = [
                r + self.format_weight * f for r, f in zip(rewards, terms["format"], strict=True)
            ]
        for name, fn, weight in zip(self.term_names[2:], self.fns, self.weights, strict=True):
            terms[name] = fn(completions, examples).values
            rewards = [r + weight * v for r, v in zip(rewards, terms[name], strict=True)]
        if self.scorer in ("math", "auto"):  # the scorers that can run out of time
            terms["timed_out"] = [float(v.timed_out) for v in verdicts]
        return RewardResult(
            rewards=rewards,
            correct=correct,
            extracted=[v.extracted for v in verdicts],
            normalized=[v.normalized for v in verdicts],
            timed_out=[v.timed_out for v in verdicts],
            terms=terms,
        )
