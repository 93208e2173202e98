"""pass@k, maj@k and the summary of an evaluation, against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from tic_grpo_cli.evaluation.metrics import majority_vote, pass_at_k, pass_ks, summarize

# --------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (4, 2, 1, 1 / 2),  # pass@1 is c/n
        (5, 1, 2, 2 / 5),  # 1 - C(4,2)/C(5,2) = 1 - 6/10
        (10, 3, 3, 17 / 24),  # 1 - C(7,3)/C(10,3) = 1 - 35/120
        (4, 1, 4, 1.0),  # k = n: any correct sample is drawn
        (4, 0, 4, 0.0),  # k = n, none correct
        (4, 0, 1, 0.0),  # none correct
        (4, 4, 1, 1.0),  # all correct
        (4, 3, 2, 1.0),  # n - c < k: every pair holds a correct one
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(200, 50) ~ 4.5e47 and C(1000, 500) overflows a float; exact integers as reference.
    assert pass_at_k(200, 37, 50) == pytest.approx(1 - math.comb(163, 50) / math.comb(200, 50))
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    assert pass_at_k(1000, 0, 500) == 0.0


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    "n,ks", [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]), (9, [1, 2, 4, 8, 9])]
)
def test_reported_ks_are_powers_of_two_and_n(n, ks):
    assert pass_ks(n) == ks


# --------------------------------------------------------------------------- maj@k


@pytest.mark.parametrize(
    "extracted,correct,expected",
    [
        (["3", "3", "5", None], [True, True, False, False], 1.0),
        (["5", "5", "3", "3", "5"], [False, False, True, True, False], 0.0),
        (["3", "5"], [True, False], 0.5),  # tie: credit in expectation over a random pick
        (["1", "2", "3"], [False, True, False], 1 / 3),
        ([None, None, None, "3"], [False, False, False, True], 1.0),  # None does not vote
        ([None, None], [False, False], 0.0),  # no vote at all counts as wrong
        (["7", "7", "7", "7"], [True] * 4, 1.0),
    ],
)
def test_majority_vote_hand_computed(extracted, correct, expected):
    assert majority_vote(extracted, correct) == pytest.approx(expected)


@pytest.mark.parametrize(
    "scorer,answer,completions",
    [
        ("gsm8k", "#### 1000", ["#### 1,000", "#### 1000", "#### 1000.0", "#### 999", "#### 999"]),
        (
            "math",
            "\\frac{1}{2}",
            ["\\boxed{\\frac{2}{4}}", "\\boxed{0.50}", "\\boxed{\\frac{1}{2}}"]
            + ["\\boxed{\\frac{1}{3}}"] * 2,
        ),
    ],
)
def test_majority_votes_on_normalised_answers(scorer, answer, completions):
    """Three spellings of the right answer outvote two of a wrong one (raw strings would
    split the three and elect the wrong one)."""
    from omegaconf import OmegaConf

    from tic_grpo_cli.config.schema import RewardConfig
    from tic_grpo_cli.data.rewards import Rewarder

    rewarder = Rewarder(OmegaConf.structured(RewardConfig(scorer=scorer)), "auto")
    scored = rewarder(completions, [{"answer": answer}] * len(completions))
    prediction = {
        **_prediction(scored.correct, scored.extracted),
        "normalized": scored.normalized,
        "timed_out": scored.timed_out,
    }
    assert summarize([prediction], len(completions))[f"maj@{len(completions)}"] == 1.0


def _prediction(correct, extracted, lengths=None, rewards=None):
    return {
        "correct": correct,
        "extracted": extracted,
        "rewards": rewards or [float(c) for c in correct],
        "lengths": lengths or [3] * len(correct),
    }


def test_summarize_two_examples_of_four_samples():
    predictions = [
        _prediction([True, True, False, False], ["7", "7", "8", None], lengths=[2, 3, 4, 5]),
        _prediction([False] * 4, [None, "1", "2", "2"], lengths=[1, 1, 1, 1]),
    ]
    m = summarize(predictions, 4)
    assert m["accuracy"] == pytest.approx((2 / 4 + 0) / 2)
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@2"] == pytest.approx((5 / 6 + 0) / 2)
    assert m["pass@4"] == pytest.approx((1 + 0) / 2)
    assert m["maj@4"] == pytest.approx((1 + 0) / 2)  # "7" wins the first, wrong "2" the second
    assert m["unparseable_fraction"] == pytest.approx(2 / 8)
    assert m["completion_length/mean"] == pytest.approx(18 / 8)
    assert m["reward/mean"] == pytest.approx(2 / 8)
    assert m["num_examples"] == 2
    assert m["avg@4"] == m["accuracy"]  # the paper's name for the mean over samples


def test_summarize_counts_timed_out_verifications():
    prediction = {
        **_prediction([False, True, False, False], [None, "1", None, "2"]),
        "normalized": [None, "1", None, "2"],
        "timed_out": [True, False, False, False],
    }
    m = summarize([prediction, {**prediction, "timed_out": [True, False, True, False]}], 4)
    assert m["timed_out_fraction"] == pytest.approx(3 / 8)
    assert m["unparseable_fraction"] == pytest.approx(4 / 8)  # timed-out ones included


def test_summarize_greedy_has_no_majority_vote():
    m = summarize([_prediction([True], ["1"]), _prediction([False], [None])], 1)
    assert m["accuracy"] == m["pass@1"] == 0.5
    assert not any(key.startswith(("maj@", "avg@")) for key in m)
