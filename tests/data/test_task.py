"""A task's splits: indexed like sequences, named in errors."""

from __future__ import annotations

import pytest

from tests.data.test_embedded import small
from tic_grpo_cli.data import build_task
from tic_grpo_cli.data.task import Examples
from tic_grpo_cli.errors import UserError


def test_examples_index_like_a_sequence():
    examples = build_task(small("arithmetic")).test
    assert isinstance(examples, Examples)
    assert examples[-1] == examples[len(examples) - 1]
    assert examples[:3] == [examples[0], examples[1], examples[2]]
    with pytest.raises(IndexError):
        examples[len(examples)]


def test_unknown_split_lists_the_existing_ones():
    task = build_task(small("arithmetic"))
    assert task.split("train") is task.train
    with pytest.raises(UserError, match=r"'validation'.*splits: train, test"):
        task.split("validation")
