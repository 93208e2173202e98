"""`build_task`: the dataset config node -> a `Task` with train/test examples and a scorer.

Examples are rendered when indexed, not up front: a Hugging Face split stays an
Arrow-backed `datasets.Dataset` (memory-mapped), and only the rows a batch asks for become
Python dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, overload

from tic_grpo_cli.data import arithmetic, countdown
from tic_grpo_cli.data.prompts import PromptRenderer
from tic_grpo_cli.data.rewards import Rewarder, RewardResult
from tic_grpo_cli.errors import UserError

Example = dict[str, Any]


class Examples(Sequence[Example]):
    """An indexable view of raw rows that renders each row into an example on access."""

    def __init__(self, rows: Any, render: Callable[[dict[str, Any]], Example]):
        self.rows = rows  # a list of dicts or a datasets.Dataset
        self.render = render

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...
    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)  # numpy and torch integers index a Dataset too
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} out of range ({len(self)} examples)")
        return self.render(self.rows[index])


class Task:
    """Splits of examples plus the reward that scores completions against them."""

    def __init__(
        self,
        name: str,
        splits: dict[str, Examples | None],
        rewarder: Rewarder,
        load_split: Callable[[str], Examples] | None = None,
        available: Sequence[str] = ("train", "test"),
    ):
        self.name = name
        self._splits = dict(splits)
        self.rewarder = rewarder
        self._load_split = load_split
        self.available = tuple(available)
        self.skipped: dict[str, int] = {}  # bad rows skipped per split (skip_bad_rows=true)

    @property
    def train(self) -> Examples:
        return self.split("train")

    @property
    def test(self) -> Examples:
        return self.split("test")

    def split(self, name: str) -> Examples:
        if name in self._splits:
            examples = self._splits[name]
            if examples is None:
                raise UserError(
                    f"dataset.{name}_split: null, so {self.name} has no {name} split "
                    f"(an evaluation-only set); train on another dataset"
                )
            return examples
        if self._load_split is not None and name in self.available:
            self._splits[name] = self._load_split(name)
            return self._splits[name]
        raise UserError(
            f"unknown split {name!r} of {self.name}; splits: {', '.join(self.available)}"
        )

    def score(self, completions: list[str], examples: Sequence[Example]) -> RewardResult:
        return self.rewarder(completions, examples)


def build_task(cfg: Any, tokenizer: Any = None) -> Task:
    """The task a `dataset` config node describes; `tokenizer` decides the chat template
    (None: plain text, fine for the embedded tasks)."""
    if cfg.kind == "arithmetic":
        return _embedded(cfg, tokenizer, "exact", _arithmetic_rows)
    if cfg.kind == "countdown":
        return _embedded(cfg, tokenizer, "countdown", _countdown_rows)
    if cfg.kind == "hf":
        from tic_grpo_cli.data.hf import build_hf_task

        return build_hf_task(cfg, tokenizer)
    raise UserError(f"dataset.kind: got {cfg.kind!r}; allowed: arithmetic, countdown, hf")


def _arithmetic_rows(cfg: Any, split: str, size: int) -> list[dict[str, Any]]:
    problems = arithmetic.generate(
        split, size, seed=cfg.seed, digits=cfg.digits, operators=tuple(cfg.operators)
    )
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
    for split, size in (("train", cfg.train_size), ("test", cfg.test_size)):
        if size < 1:
            raise UserError(f"dataset.{split}_size: must be >= 1, got {size}")
        try:
            rows = make_rows(cfg, split, size)
        except ValueError as err:
            raise UserError(f"dataset.{split}_size: {err}") from None
        if renderer is None:
            renderer = PromptRenderer(cfg, tokenizer, rows[0].keys(), f"the {cfg.kind} task")
        splits[split] = Examples(rows, _render_embedded(renderer))
    return Task(cfg.kind, splits, Rewarder(cfg.reward, scorer))


def _render_embedded(renderer: PromptRenderer) -> Callable[[dict[str, Any]], Example]:
    return lambda row: {**row, "prompt": renderer(row["question"], row)}
