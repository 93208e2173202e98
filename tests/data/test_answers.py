"""Finding the final answer in a completion."""

from __future__ import annotations

from tic_grpo_cli.data.answers import last_box


def test_last_box_matches_nested_braces():
    assert last_box("a \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_box("\\boxed{open") is None and last_box("none") is None
