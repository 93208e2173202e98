"""What a task is: splits of examples (`Examples`, rendered on access) and a rewarder (`Task`).

The builders live beside it: embedded.py (arithmetic, countdown) and hf.py (files and hub
data sets); `tic_grpo_cli.data.build_task` picks one. Examples are rendered when indexed,
not up front: a Hugging Face split stays an Arrow-backed `datasets.Dataset`
(memory-mapped), and only the rows a batch asks for become Python dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, overload

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

    def subset(self, indices: list[int]) -> Examples:
        """The examples at `indices`, in that order (a Dataset stays Arrow-backed)."""
        select = getattr(self.rows, "select", None)
        rows = select(indices) if select is not None else [self.rows[i] for i in indices]
        return Examples(rows, self.render)


class Task:
    """Splits of examples plus the reward that scores completions against them."""

    def __init__(
        self,
        name: str,
        splits: dict[str, Examples | None],
        rewarder: Rewarder,
        load_split: Callable[[str], Examples] | None = None,
        available: Sequence[str] = ("train", "test"),
        missing: dict[str, str] | None = None,
    ):
        self.name = name
        self._splits = dict(splits)
        # split -> why it has no examples (a UserError message), for splits given as None.
        self.missing = dict(missing or {})
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
                if name in self.missing:
                    raise UserError(self.missing[name])
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

    def built(self, name: str) -> Examples | None:
        """A split built with the task, or None (not built, or absent): never loads one."""
        return self._splits.get(name)

    def keep(self, name: str, indices: list[int]) -> None:
        """Keep only the examples at `indices` of split `name`, counting the rest skipped."""
        examples = self._splits[name]
        assert examples is not None, name
        self._splits[name] = examples.subset(indices)
        self.skipped[name] = self.skipped.get(name, 0) + len(examples) - len(indices)

    def score(self, completions: list[str], examples: Sequence[Example]) -> RewardResult:
        return self.rewarder(completions, examples)
