"""Properties every policy loss must have, over random shapes, masks and values."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tic_grpo_cli.algorithms import ALGORITHMS, compute_policy_loss
from tic_grpo_cli.algorithms.core import AGGREGATIONS, group_advantages, kl_penalty
from tic_grpo_cli.algorithms.correction import correction_weights

SETTINGS = settings(max_examples=60, deadline=None)
HORIZON = 12  # explicit T, so that adding padding columns does not change 1/T
values = st.floats(-1.5, 1.5, allow_nan=False, allow_subnormal=False)


@st.composite
def minibatches(draw):
    b = draw(st.integers(1, 4))
    length = draw(st.integers(1, 6))

    def matrix(elements):
        return draw(
            st.lists(st.lists(elements, min_size=length, max_size=length), min_size=b, max_size=b)
        )

    old = torch.tensor(matrix(st.floats(-6.0, 0.0)), dtype=torch.float64)
    delta = torch.tensor(matrix(values), dtype=torch.float64)
    mask = torch.tensor(matrix(st.booleans()))  # ragged, gaps and empty rows included
    adv = torch.tensor(draw(st.lists(values, min_size=b, max_size=b)), dtype=torch.float64)
    return old + delta, old, adv, mask


def loss_and_grad(name, logprobs, old, adv, mask, aggregation=None):
    logprobs = logprobs.detach().clone().requires_grad_(True)
    loss, stats = compute_policy_loss(
        name, logprobs, old, adv, mask, max_completion_length=HORIZON, aggregation=aggregation
    )
    loss.backward()
    return loss.detach(), logprobs.grad, stats


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(
    minibatches(),
    st.sampled_from(ALGORITHMS),
    st.sampled_from((None, *AGGREGATIONS)),
    st.integers(1, 3),
    st.floats(-50.0, 50.0),
)
def test_padding_columns_change_nothing(batch, name, aggregation, extra, garbage):
    logprobs, old, adv, mask = batch
    loss, grad, stats = loss_and_grad(name, logprobs, old, adv, mask, aggregation)
    pad = torch.full((len(adv), extra), garbage, dtype=torch.float64)
    padded = (
        torch.cat([logprobs, pad], dim=1),
        torch.cat([old, -pad], dim=1),
        adv,
        torch.cat([mask, torch.zeros(len(adv), extra, dtype=torch.bool)], dim=1),
    )
    padded_loss, padded_grad, padded_stats = loss_and_grad(name, *padded, aggregation)
    close(padded_loss, loss)
    close(padded_grad[:, : mask.shape[1]], grad)
    assert torch.equal(padded_grad[:, mask.shape[1] :], torch.zeros_like(pad))
    assert padded_stats == stats


@SETTINGS
@given(
    minibatches(), st.sampled_from(ALGORITHMS), st.sampled_from((None, *AGGREGATIONS)), st.randoms()
)
def test_order_of_completions_does_not_matter(batch, name, aggregation, rng):
    logprobs, old, adv, mask = batch
    order = list(range(len(adv)))
    rng.shuffle(order)
    loss, grad, _ = loss_and_grad(name, logprobs, old, adv, mask, aggregation)
    shuffled = [t[order] for t in (logprobs, old, adv, mask)]
    shuffled_loss, shuffled_grad, _ = loss_and_grad(name, *shuffled, aggregation)
    close(shuffled_loss, loss)
    close(shuffled_grad, grad[order])


@SETTINGS
@given(minibatches(), st.sampled_from(ALGORITHMS), st.floats(0.01, 100.0))
def test_scaling_advantages_scales_the_loss(batch, name, scale):
    logprobs, old, adv, mask = batch
    loss, grad, stats = loss_and_grad(name, logprobs, old, adv, mask)
    scaled_loss, scaled_grad, scaled_stats = loss_and_grad(name, logprobs, old, adv * scale, mask)
    close(scaled_loss, loss * scale)
    close(scaled_grad, grad * scale)
    assert scaled_stats == stats  # clipping depends on the sign of A, not its size


@SETTINGS
@given(minibatches(), st.sampled_from(ALGORITHMS))
def test_zero_advantages_give_zero_loss_and_gradient(batch, name):
    logprobs, old, adv, mask = batch
    loss, grad, stats = loss_and_grad(name, logprobs, old, torch.zeros_like(adv), mask)
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    assert 0.0 <= stats["clip_fraction"] <= 1.0


@SETTINGS
@given(st.integers(1, 4), st.integers(2, 6), st.data())
def test_group_advantages_are_centred_and_unit_scaled(n, g, data):
    rewards = torch.tensor(
        data.draw(
            st.lists(
                st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=g, max_size=g),
                min_size=n,
                max_size=n,
            )
        ),
        dtype=torch.float64,
    )
    advantages = group_advantages(rewards)
    flat = rewards.amax(1) == rewards.amin(1)
    assert torch.equal(advantages[flat], torch.zeros_like(advantages[flat]))
    live = advantages[~flat]
    if len(live) == 0:
        return
    close(live.sum(1), torch.zeros(len(live), dtype=torch.float64))
    torch.testing.assert_close(
        live.std(1), torch.ones(len(live), dtype=torch.float64), rtol=1e-5, atol=0
    )


@SETTINGS
@given(minibatches())
def test_kl_estimators_vanish_on_the_reference_and_k2_k3_are_nonnegative(batch):
    logprobs, old, _, mask = batch
    for estimator in ("k1", "k2", "k3"):
        assert kl_penalty(old, old, mask, estimator).item() == 0.0
    for estimator in ("k2", "k3"):
        assert kl_penalty(logprobs, old, mask, estimator).item() >= 0.0


@SETTINGS
@given(
    minibatches(),
    st.sampled_from(("token_tis", "seq_tis", "seq_mis")),
    st.floats(1.01, 10.0),
    st.floats(-50.0, 50.0),
)
def test_correction_weights_are_bounded_and_ignore_padding(batch, mode, cap, garbage):
    """Weights lie in [0, C] (seq_mis: exactly 0 or 1), padding never changes them, and a
    sampler that agrees with the trainer gives weight 1 everywhere."""
    logprobs, old, _, mask = batch
    correction = correction_weights(mode, logprobs, old, mask, cap)
    weights = correction.token_weights if mode == "token_tis" else correction.seq_weights
    assert ((weights >= 0) & (weights <= cap * (1 + 1e-12))).all()
    if mode == "seq_mis":
        assert set(weights.tolist()) <= {0.0, 1.0}
    dirty = correction_weights(
        mode, logprobs.masked_fill(~mask, garbage), old.masked_fill(~mask, -garbage), mask, cap
    )
    dirty_weights = dirty.token_weights if mode == "token_tis" else dirty.seq_weights
    assert torch.equal(dirty_weights, weights)
    same = correction_weights(mode, old, old, mask, cap)
    same_weights = same.token_weights if mode == "token_tis" else same.seq_weights
    assert (same_weights == 1).all()
