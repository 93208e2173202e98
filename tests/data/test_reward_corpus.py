"""Every case of the hand-written conformance corpus (tests/data/reward_corpus.yaml): the
verdict and the normalised answer each scorer must give."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tic_grpo_cli.data.rewards import score_all
from tic_grpo_cli.data.verify import shared_verifier

CORPUS = yaml.safe_load((Path(__file__).parent / "reward_corpus.yaml").read_text("utf-8"))
CASES = [
    pytest.param(scorer, case, id=f"{scorer}-{i}")
    for scorer, cases in CORPUS.items()
    for i, case in enumerate(cases)
]


def test_corpus_is_large_and_covers_every_scorer():
    assert len(CASES) >= 150
    assert set(CORPUS) == {"gsm8k", "number", "exact", "countdown", "math"}


@pytest.mark.parametrize("scorer,case", CASES)
def test_corpus_case(scorer, case):
    example = {key: value for key, value in case.items() if key not in ("completion", "why")}
    (verdict,) = score_all(scorer, [case["completion"]], [example], shared_verifier(5.0))
    assert (verdict.correct, verdict.normalized) == (case["correct"], case["normalized"]), case
    assert (verdict.extracted is None) == (case["normalized"] is None)
    assert not verdict.timed_out
