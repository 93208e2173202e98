"""User reward functions, called as TRL calls them: ``fn(completions, **fields)``.

A function receives the completions and one list per example field (``answer``, ``prompt``,
``question`` and whatever else the rows hold) and returns one number per completion: a list,
a tuple, or a numpy/torch array of bool, int or float. It may instead return a dict
``{"reward": [...], "correct": [...]}`` to report which completions are correct apart from
their reward, so that ``accuracy`` stays an accuracy (docs/rewards.md).
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tic_grpo_cli.errors import UserError


@dataclass
class FnOutput:
    values: list[float]
    correct: list[bool] | None  # None: the function reports no correctness


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def load_reward_fn(spec: str, key: str = "dataset.reward.fn") -> Callable[..., Any]:
    """Import ``package.module:function``; the working directory is searched too, so a
    ``my_rewards.py`` beside the run needs no install. Raises UserError naming `key`."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name.isidentifier():
        raise UserError(f"{key}: got {spec!r}; expected package.module:function")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise UserError(
            f"{key}: cannot import {module_name!r} ({_one_line(err)}); "
            "install it or run from the directory that holds it"
        ) from err
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"{key}: module {module_name!r} has no function {name!r}")
    return fn


def _as_list(values: Any) -> list[Any]:
    # numpy and torch arrays: tolist() gives Python scalars (a 0-d array gives one scalar).
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"a {type(values).__name__}, not one value per completion")
    return list(values)


def _number(value: Any) -> float | None:
    """A finite float from a bool/int/float, numpy scalars included; None otherwise."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar (np.float32, np.bool_) -> Python scalar
    if isinstance(value, numbers.Real):  # bool and numpy scalars (after .item()) included
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def call_reward_fn(
    fn: Callable[..., Any], spec: str, completions: list[str], examples: Sequence[dict[str, Any]]
) -> FnOutput:
    """Call ``fn(completions, **fields)`` and check what it returns.

    Raises UserError (one line naming `spec`, and the completion index where one value is at
    fault) when it raises, returns the wrong number of values, or a value that is not a finite
    number (None, NaN, a string): a reward that is wrong stops the run before the optimizer
    step that would have used it.
    """
    fields = {key: [ex.get(key) for ex in examples] for key in examples[0]} if examples else {}
    try:
        returned = fn(completions, **fields)
    except Exception as err:
        raise UserError(f"reward function {spec} failed: {_one_line(err)}") from err
    correct_raw = None
    if isinstance(returned, Mapping):
        if "reward" not in returned:
            raise UserError(
                f"reward function {spec} returned a dict with keys {sorted(returned)}; "
                "a dict needs 'reward' (and optionally 'correct'), one value per completion"
            )
        returned, correct_raw = returned["reward"], returned.get("correct")
    values = _checked(returned, spec, len(completions), "rewards")
    correct = None
    if correct_raw is not None:
        correct = [v != 0 for v in _checked(correct_raw, spec, len(completions), "'correct'")]
    return FnOutput(values, correct)


def _checked(returned: Any, spec: str, n: int, what: str) -> list[float]:
    try:
        values = _as_list(returned)
    except TypeError as err:
        raise UserError(
            f"reward function {spec} returned {err} for {what}; return a list or array of "
            f"{n} numbers"
        ) from None
    if len(values) != n:
        raise UserError(
            f"reward function {spec} returned {len(values)} {what} for {n} completions; "
            "return one number per completion"
        )
    out = []
    for i, value in enumerate(values):
        number = _number(value)
        if number is None:
            raise UserError(
                f"reward function {spec} returned {value!r} for completion {i} ({what}); "
                "each must be a finite number or bool"
            )
        out.append(number)
    return out


class RewardFn:
    """A loaded user function with the name its term is logged under (``reward/<name>``)."""

    def __init__(self, spec: str, key: str):
        self.spec = spec
        self.name = spec.partition(":")[2]
        self.fn = load_reward_fn(spec, key)

    def __call__(self, completions: list[str], examples: Sequence[dict[str, Any]]) -> FnOutput:
        return call_reward_fn(self.fn, self.spec, completions, examples)
