"""The countdown scorer: exact arithmetic, and no input makes it raise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tic_grpo_cli.data import countdown


def test_countdown_division_is_exact():
    # 7/2*2 = 7 only with exact fractions.
    assert countdown.score("7/2*2", [7, 2, 2], 7) == (True, "7/2*2")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-*/() =<>answer\n.x_", max_size=60))
def test_countdown_scorer_never_raises(text):
    correct, _ = countdown.score(text, [1, 2, 3], 6)
    assert isinstance(correct, bool)
