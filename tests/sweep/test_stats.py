"""Mean, std and the 95% Student-t interval over seeds, against printed tables."""

from __future__ import annotations

import pytest

from tic_grpo_cli.sweep.stats import describe, t_quantile_975


@pytest.mark.parametrize(
    "df,expected",
    [(1, 12.706205), (2, 4.302653), (3, 3.182446), (4, 2.776445), (10, 2.228139), (30, 2.042272)],
)
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=1e-6)


def test_describe_small_samples():
    assert describe([]) == {"mean": None, "std": None, "ci95_low": None, "ci95_high": None}
    assert describe([0.3]) == {"mean": 0.3, "std": None, "ci95_low": None, "ci95_high": None}
