"""Sampler-trainer mismatch: the correction weights and measures on a constructed batch whose
log-probs differ by known amounts.

Expected numbers come from python floats by hand (d = log pi_old - log pi_sampler below).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import SMALL_RUN, compose_config
from tic_grpo_cli.algorithms import ALGORITHMS, compute_policy_loss
from tic_grpo_cli.algorithms.correction import Correction, correction_weights, mismatch_stats
from tic_grpo_cli.config.schema import ConfigError
from tic_grpo_cli.config.validation import validate_train

# d per token; None is padding. Sums: 0.8, 0.7, -1.25.
D = [[0.1, -0.2, 0.9, None], [0.3, 0.4, None, None], [-1.0, -0.3, 0.0, 0.05]]
OLD = [[-0.5, -1.0, -2.0, -3.0]] * 3
TOKENS = [d for row in D for d in row if d is not None]


def batch(garbage=float("nan")):
    """old (trainer) and sampler log-probs [3, 4] float64, mask; padding holds `garbage`."""
    mask = torch.tensor([[d is not None for d in row] for row in D])
    old = torch.tensor(OLD, dtype=torch.float64)
    d = torch.tensor([[0.0 if x is None else x for x in row] for row in D], dtype=torch.float64)
    sampler = (old - d).masked_fill(~mask, garbage)
    return old.masked_fill(~mask, -garbage), sampler, mask


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), -1e30])
def test_weights_by_hand(garbage):
    old, sampler, mask = batch(garbage)
    token = correction_weights("token_tis", old, sampler, mask, 2.0).token_weights
    expected = [[1.0 if x is None else min(math.exp(x), 2.0) for x in row] for row in D]
    torch.testing.assert_close(token, torch.tensor(expected, dtype=torch.float64))
    assert token[0, 2].item() == 2.0  # e^0.9 = 2.46, truncated at C
    seq = correction_weights("seq_tis", old, sampler, mask, 2.0).seq_weights
    # e^0.8 = 2.23 and e^0.7 = 2.01 truncated at 2; e^-1.25 = 0.287 kept.
    torch.testing.assert_close(seq, torch.tensor([2.0, 2.0, math.exp(-1.25)], dtype=torch.float64))
    mis = correction_weights("seq_mis", old, sampler, mask, 3.0).seq_weights
    # log 3 = 1.099: |0.8| and |0.7| inside, |-1.25| outside, dropped.
    assert mis.tolist() == [1.0, 1.0, 0.0]
    assert correction_weights("none", old, sampler, mask, 2.0) == Correction()


@pytest.mark.parametrize(
    ("mode", "cap", "fraction"),
    [
        ("none", 2.0, 0.0),
        ("token_tis", 2.0, 1 / 9),
        ("seq_tis", 2.0, 2 / 3),
        ("seq_mis", 3.0, 1 / 3),
    ],
)
def test_mismatch_stats_by_hand(mode, cap, fraction):
    stats = mismatch_stats(*batch(float("inf")), mode, cap)
    assert stats["abs_logprob_diff_mean"] == pytest.approx((1.2 + 0.7 + 1.35) / 9)
    assert stats["abs_logprob_diff_max"] == pytest.approx(1.0)
    # KL(pi_sampler || pi_old), k3 with r = pi_old / pi_sampler = e^d: e^d - 1 - d.
    k3 = [[math.expm1(x) - x for x in row if x is not None] for row in D]
    assert stats["kl"] == pytest.approx(sum(map(sum, k3)) / 9)
    assert stats["seq_kl"] == pytest.approx(sum(map(sum, k3)) / 3)
    assert stats["corrected_fraction"] == pytest.approx(fraction)


def test_bad_mode_or_threshold():
    with pytest.raises(ValueError, match="unknown rollout correction"):
        correction_weights("tis", *batch(), 2.0)
    with pytest.raises(ValueError, match="must be > 1"):
        correction_weights("seq_tis", *batch(), 1.0)


def test_grpo_gradient_and_value_by_hand():
    """At r = 1 GRPO's d loss / d log pi_it is -A_i / (B |s_i|); a token weight multiplies
    it, a completion weight multiplies both it and the completion's term A_i."""
    old, sampler, mask = batch()
    adv = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    lengths = [3, 2, 4]
    for mode, cap in (("token_tis", 2.0), ("seq_tis", 2.0), ("seq_mis", 3.0)):
        correction = correction_weights(mode, old, sampler, mask, cap)
        logprobs = old.detach().clone().requires_grad_(True)
        loss, _ = compute_policy_loss("grpo", logprobs, old, adv, mask, correction=correction)
        loss.backward()
        seq_w = {"token_tis": [1.0] * 3, "seq_tis": [2.0, 2.0, math.exp(-1.25)]}.get(
            mode, [1.0, 1.0, 0.0]
        )
        expected_grad, value = [], 0.0
        for i, row in enumerate(D):
            a, n = adv[i].item(), lengths[i]
            value += seq_w[i] * a / 3
            token_w = [min(math.exp(x), 2.0) if mode == "token_tis" else 1.0 for x in row[:n]]
            grad = [-w * seq_w[i] * a / (3 * n) for w in token_w]
            expected_grad.append(grad + [0.0] * (4 - n))
        torch.testing.assert_close(logprobs.grad, torch.tensor(expected_grad).double())
        assert loss.item() == pytest.approx(-value)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_takes_the_weights(name):
    """Whatever the objective: a token weight scales the gradient through that token, a
    completion weight the gradient of the whole completion."""
    old, sampler, mask = batch()
    torch.manual_seed(1)
    logprobs = (old + 0.05 * torch.randn_like(old)).masked_fill(~mask, 0.0)
    adv = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def grad(correction):
        lp = logprobs.clone().requires_grad_(True)
        loss, _ = compute_policy_loss(name, lp, old, adv, mask, correction=correction)
        loss.backward()
        return lp.grad

    plain = grad(None)
    token = correction_weights("token_tis", old, sampler, mask, 2.0)
    torch.testing.assert_close(grad(token), plain * token.token_weights)
    seq = correction_weights("seq_tis", old, sampler, mask, 2.0)
    torch.testing.assert_close(grad(seq), plain * seq.seq_weights[:, None])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.rollout_correction=tis"], "algorithm.rollout_correction"),
        (["algorithm.rollout_correction_c=1"], "algorithm.rollout_correction_c"),
        (
            ["algorithm.rollout_correction=seq_tis", "trainer.old_logprobs=sampler"],
            "needs trainer.old_logprobs=recompute",
        ),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_train(compose_config(*SMALL_RUN, *overrides))
