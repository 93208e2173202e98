"""The embedded tasks (arithmetic, countdown, chain): generated offline from the config's seed,
train and test disjoint, scored by their own scorer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tic_grpo_cli.data import arithmetic, chain, countdown
from tic_grpo_cli.data.prompts import PromptRenderer
from tic_grpo_cli.data.rewards import Rewarder
from tic_grpo_cli.data.task import Example, Examples, Task
from tic_grpo_cli.errors import UserError


def build_embedded_task(cfg: Any, tokenizer: Any) -> Task:
    """The arithmetic, countdown or chain task a `dataset` config node describes."""
    if cfg.kind == "arithmetic":
        return _embedded(cfg, tokenizer, "exact", _arithmetic_rows)
    if cfg.kind == "chain":
        return _embedded(cfg, tokenizer, "exact", _chain_rows)
    return _embedded(cfg, tokenizer, "countdown", _countdown_rows)


def _arithmetic_rows(cfg: Any, split: str, size: int) -> list[dict[str, Any]]:
    problems = arithmetic.generate(
        split, size, seed=cfg.seed, digits=cfg.digits, operators=tuple(cfg.operators)
    )
    return [{"question": p.question, "answer": p.answer} for p in problems]


def _chain_rows(cfg: Any, split: str, size: int) -> list[dict[str, Any]]:
    problems = chain.generate(split, size, seed=cfg.seed, chain_length=cfg.chain_length)
    return [{"question": p.question, "answer": p.answer} for p in problems]


def _countdown_rows(cfg: Any, split: str, size: int) -> list[dict[str, Any]]:
    problems = countdown.generate(
        split,
        size,
        seed=cfg.seed,
        num_numbers=cfg.num_numbers,
        max_number=cfg.max_number,
        max_target=cfg.max_target,
        operators=tuple(cfg.operators),
    )
    return [
        {
            "question": p.question,
            "answer": str(p.target),
            "numbers": list(p.numbers),
            "target": p.target,
            "solution": p.solution,
        }
        for p in problems
    ]


def _embedded(
    cfg: Any,
    tokenizer: Any,
    scorer: str,
    make_rows: Callable[[Any, str, int], list[dict[str, Any]]],
) -> Task:
    allowed = arithmetic.OPERATORS if cfg.kind == "arithmetic" else countdown.OPERATORS
    unknown = [op for op in cfg.operators if op not in allowed]
    if unknown:
        raise UserError(
            f"dataset.operators: {unknown} not allowed for {cfg.kind}; use {list(allowed)}"
        )
    splits: dict[str, Examples | None] = {}
    renderer = None
    # dataset.test_split names the generated split evaluated as "test" (chain: validation
    # too, so hyper-parameters can be chosen without looking at the test split).
    sources = {"train": "train", "test": cfg.test_split}
    for split, size in (("train", cfg.train_size), ("test", cfg.test_size)):
        if size < 1:
            raise UserError(f"dataset.{split}_size: must be >= 1, got {size}")
        try:
            rows = make_rows(cfg, sources[split], size)
        except ValueError as err:
            raise UserError(f"dataset.{split}_size: {err}") from None
        if renderer is None:
            renderer = PromptRenderer(cfg, tokenizer, rows[0].keys(), f"the {cfg.kind} task")
        splits[split] = Examples(rows, _render_embedded(renderer))
    return Task(cfg.kind, splits, Rewarder(cfg.reward, scorer))


def _render_embedded(renderer: PromptRenderer) -> Callable[[dict[str, Any]], Example]:
    return lambda row: {**row, "prompt": renderer(row["question"], row)}
