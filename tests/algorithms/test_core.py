"""The policy losses against closed forms worked out by hand.

Every expected value and gradient below comes from explicit loops over python floats and
the analytic derivative of each objective, never from the code under test. The losses are
minus the objectives, so the expected gradients carry a minus sign.
"""

from __future__ import annotations

import math

import pytest
import torch

from tic_grpo_cli.algorithms import ALGORITHMS, compute_policy_loss, default_aggregation
from tic_grpo_cli.algorithms.core import AGGREGATIONS, KL_ESTIMATORS, group_advantages, kl_penalty

EPS_LOW, EPS_HIGH = 0.2, 0.28
T = 6  # max_completion_length, deliberately larger than L

# Six completions of at most L = 4 tokens; None marks padding. The token log-ratios and
# sequence ratios fall inside, above and below [0.8, 1.28] with both signs of A:
#   row  A     tokens r_t                 rho (product)  s (geometric mean)
#   0   +1.0   1, 1.35^, 0.67, 1.11       1.00           1.00
#   1   -0.5   1.42, 0.61v                0.86           0.93
#   2   +0.8   1.42^, 1.35^, 1.16         2.23^          1.31^
#   3   -1.2   1.49, 1.35, 1.22, 1.35     3.32*          1.35
#   4   -0.7   0.67v, 0.82, 0.90          0.50v          0.79v
#   5   +0.9   0.55, 0.74                 0.41           0.64
# ^ clipped high, v clipped low by PPO's clip given the sign of A (no gradient there);
# * above 1.28 with A < 0: PPO keeps the gradient, TIC's cap removes it. TIC and ub_clip
# cap every ratio above 1.28 whatever A, and never clip below.
DELTAS = [
    [0.0, 0.3, -0.4, 0.1],
    [0.35, -0.5, None, None],
    [0.35, 0.3, 0.15, None],
    [0.4, 0.3, 0.2, 0.3],
    [-0.4, -0.2, -0.1, None],
    [-0.6, -0.3, None, None],
]
ADVANTAGES = [1.0, -0.5, 0.8, -1.2, -0.7, 0.9]
OLD = [[-1.0, -2.0, -0.5, -1.5]] * 6
PAD_VALUES = [30.0, -1e4]  # garbage in the padding of logprobs and old_logprobs


def tensors(deltas=DELTAS, advantages=ADVANTAGES, old=OLD):
    """logprobs (leaf, requires grad), old_logprobs, advantages, mask in float64."""
    lp, old_lp, mask = [], [], []
    for row_d, row_old in zip(deltas, old, strict=True):
        lp.append(
            [PAD_VALUES[0] if d is None else o + d for d, o in zip(row_d, row_old, strict=True)]
        )
        old_lp.append(
            [PAD_VALUES[1] if d is None else o for d, o in zip(row_d, row_old, strict=True)]
        )
        mask.append([d is not None for d in row_d])
    logprobs = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
    return (
        logprobs,
        torch.tensor(old_lp, dtype=torch.float64),
        torch.tensor(advantages, dtype=torch.float64),
        torch.tensor(mask),
    )


def run(name, deltas=DELTAS, advantages=ADVANTAGES, **kwargs):
    logprobs, old, adv, mask = tensors(deltas, advantages)
    kwargs = {"max_completion_length": T, "epsilon_low": EPS_LOW, "epsilon_high": EPS_HIGH} | kwargs
    loss, stats = compute_policy_loss(name, logprobs, old, adv, mask, **kwargs)
    loss.backward()
    return loss.item(), logprobs.grad.tolist(), stats


def tokens(row):
    return [d for d in row if d is not None]


# --- hand-derived per-element objectives: (value, derivative w.r.t. log r) -------------


def ppo(log_r, a):
    """min(r a, clip(r) a) = a min(r, 1+eh) for a >= 0, a max(r, 1-el) for a < 0."""
    r = math.exp(log_r)
    if a >= 0:
        return (a * r, a * r) if r <= 1 + EPS_HIGH else (a * (1 + EPS_HIGH), 0.0)
    return (a * r, a * r) if r >= 1 - EPS_LOW else (a * (1 - EPS_LOW), 0.0)


def upper_cap(log_r, a):
    """a min(r, 1+eh), any sign of a."""
    r = math.exp(log_r)
    return (a * r, a * r) if r <= 1 + EPS_HIGH else (a * (1 + EPS_HIGH), 0.0)


def token_level(elem, weight, deltas=DELTAS, advantages=ADVANTAGES):
    """Objective sum_i weight_i sum_t elem(d_it, A_i); returns (loss, grad of the loss)."""
    value, grad = 0.0, []
    for i, (row, a) in enumerate(zip(deltas, advantages, strict=True)):
        g = []
        for d in row:
            if d is None:
                g.append(0.0)
                continue
            v, dv = elem(d, a)
            value += weight(i) * v
            g.append(-weight(i) * dv)
        grad.append(g)
    return -value, grad


def sequence_level(elem, weight, geometric=False, deltas=DELTAS, advantages=ADVANTAGES):
    """Objective sum_i weight_i elem(log rho_i, A_i), log rho_i the sum (or, geometric, the
    mean) of the token log-ratios; d log rho_i / d logprob_it = 1 (or 1/|s_i|)."""
    value, grad = 0.0, []
    for i, (row, a) in enumerate(zip(deltas, advantages, strict=True)):
        n = len(tokens(row))
        log_rho = sum(tokens(row)) / (n if geometric else 1)
        v, dv = elem(log_rho, a)
        value += weight(i) * v
        chain = 1 / n if geometric else 1.0
        grad.append([0.0 if d is None else -weight(i) * dv * chain for d in row])
    return -value, grad


B = len(DELTAS)
LENGTHS = [len(tokens(row)) for row in DELTAS]
TOTAL = sum(LENGTHS)


def per_seq_mean(i):
    return 1 / (B * LENGTHS[i])


def per_T(i):
    return 1 / (B * T)


def per_token(i):
    return 1 / TOTAL


EXPECTED = {
    "grpo": lambda: token_level(ppo, per_seq_mean),
    "dr_grpo": lambda: token_level(ppo, per_T),
    "dapo": lambda: token_level(ppo, per_token),
    "ub_clip": lambda: token_level(upper_cap, per_T),
    "tic": lambda: sequence_level(upper_cap, per_T),
    "traj_is": lambda: sequence_level(ppo, per_T),
    # GSPO: mean_i of the sequence term, no length weight.
    "gspo": lambda: sequence_level(ppo, lambda i: 1 / B, geometric=True),
}


def assert_close(actual, expected, tol=1e-9):
    if isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_close(a, e, tol)
    else:
        assert actual == pytest.approx(expected, rel=1e-6, abs=tol)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_value_and_gradient_match_hand_derivation(name):
    loss, grad, _ = run(name)
    expected_loss, expected_grad = EXPECTED[name]()
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad)


def test_grpo_no_is_is_plain_policy_gradient():
    loss, grad, stats = run("grpo_no_is")
    value, expected_grad = 0.0, []
    for i, (row, old_row, a) in enumerate(zip(DELTAS, OLD, ADVANTAGES, strict=True)):
        n = LENGTHS[i]
        value += (
            sum(o + d for d, o in zip(row, old_row, strict=True) if d is not None) * a / (B * n)
        )
        expected_grad.append([0.0 if d is None else -a / (B * n) for d in row])
    assert_close(loss, -value)
    assert_close(grad, expected_grad)
    assert stats["clip_fraction"] == 0.0


def test_spot_values_of_the_table():
    """A few entries by hand, as a check on the reference helpers themselves."""
    # TIC, row 5: rho = e^-0.9 under the cap, objective term A rho / T.
    assert upper_cap(-0.9, 0.9) == pytest.approx((0.9 * 0.40656966, 0.9 * 0.40656966))
    # TIC, row 3: rho = e^1.2 > 1.28 with A < 0: value A (1+eh), no gradient.
    assert upper_cap(1.2, -1.2) == pytest.approx((-1.2 * 1.28, 0.0))
    # PPO, A < 0 below the range: the clip wins (value A (1-el)), no gradient.
    assert ppo(-0.5, -0.5) == pytest.approx((-0.5 * 0.8, 0.0))
    # PPO, A < 0 above the range: r A keeps the gradient.
    assert ppo(0.35, -0.5) == pytest.approx((-0.5 * math.exp(0.35), -0.5 * math.exp(0.35)))


@pytest.mark.parametrize(
    ("name", "aggregation", "weight"),
    [
        ("grpo", "token_mean", per_token),
        ("grpo", "seq_mean_token_sum_norm", per_T),
        ("dapo", "seq_mean_token_mean", per_seq_mean),
    ],
)
def test_aggregation_override_token_level(name, aggregation, weight):
    loss, grad, _ = run(name, aggregation=aggregation)
    expected_loss, expected_grad = token_level(ppo, weight)
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize(
    ("aggregation", "weight"),
    [
        ("seq_mean_token_mean", per_seq_mean),  # TIC's 1/|s_i| option
        ("token_mean", per_token),
    ],
)
def test_aggregation_override_tic(aggregation, weight):
    loss, grad, _ = run("tic", aggregation=aggregation)
    expected_loss, expected_grad = sequence_level(upper_cap, weight)
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad)


def test_gspo_token_mean_weighs_each_sequence_by_its_length():
    loss, grad, _ = run("gspo", aggregation="token_mean")
    expected = sequence_level(ppo, lambda i: LENGTHS[i] / TOTAL, geometric=True)
    assert_close(loss, expected[0])
    assert_close(grad, expected[1])


def test_default_T_is_L():
    loss, grad, _ = run("tic", max_completion_length=None)
    expected_loss, expected_grad = sequence_level(upper_cap, lambda i: 1 / (B * 4))
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad)


def test_default_aggregations():
    assert set(ALGORITHMS) == {
        "grpo", "grpo_no_is", "tic", "ub_clip", "traj_is", "gspo", "dr_grpo", "dapo",
        "cispo", "gmpo", "dppo",
    }  # fmt: skip
    assert set(AGGREGATIONS) == {"seq_mean_token_mean", "seq_mean_token_sum_norm", "token_mean"}
    expected = {
        "grpo": "seq_mean_token_mean",
        "grpo_no_is": "seq_mean_token_mean",
        "gspo": "seq_mean_token_mean",
        "tic": "seq_mean_token_sum_norm",
        "ub_clip": "seq_mean_token_sum_norm",
        "traj_is": "seq_mean_token_sum_norm",
        "dr_grpo": "seq_mean_token_sum_norm",
        "dapo": "token_mean",
        "cispo": "token_mean",
        "gmpo": "seq_mean_token_mean",
        "dppo": "token_mean",
    }
    assert {name: default_aggregation(name) for name in ALGORITHMS} == expected


# --- stats ------------------------------------------------------------------------------


def test_stats_token_level():
    _, _, stats = run("grpo")
    # Clipped tokens, by the table: row 0 t1, row 1 t1, row 2 t0 t1, row 4 t0.
    assert stats["clip_fraction"] == pytest.approx(5 / 18)
    assert stats["clip_fraction_high"] == pytest.approx(3 / 18)
    assert stats["clip_fraction_low"] == pytest.approx(2 / 18)
    ratios = [math.exp(d) for row in DELTAS for d in tokens(row)]
    assert stats["ratio_mean"] == pytest.approx(sum(ratios) / 18)
    assert stats["ratio_max"] == pytest.approx(math.exp(0.4))
    assert stats["ratio_min"] == pytest.approx(math.exp(-0.6))
    assert "seq_ratio_mean" not in stats
    # ub_clip caps every token ratio above 1.28 whatever A: 0.3, 0.35, 0.35, 0.3, 0.4,
    # 0.3, 0.3 (0.2 -> 1.22 is under).
    assert run("ub_clip")[2]["clip_fraction"] == pytest.approx(7 / 18)


@pytest.mark.parametrize(("name", "clipped"), [("tic", 2 / 6), ("traj_is", 2 / 6), ("gspo", 2 / 6)])
def test_stats_sequence_level(name, clipped):
    _, _, stats = run(name)
    assert stats["clip_fraction"] == pytest.approx(clipped)
    assert stats["ratio_max"] == pytest.approx(math.exp(0.4))
    if name == "gspo":
        seq = [sum(tokens(row)) / len(tokens(row)) for row in DELTAS]
    else:
        seq = [sum(tokens(row)) for row in DELTAS]
    assert stats["seq_ratio_mean"] == pytest.approx(sum(math.exp(s) for s in seq) / 6)
    assert stats["seq_ratio_max"] == pytest.approx(math.exp(max(seq)))
    assert stats["seq_ratio_min"] == pytest.approx(math.exp(min(seq)))
    assert stats["seq_log_ratio_max"] == pytest.approx(max(seq))
    assert all(isinstance(v, float) for v in stats.values())


# --- K = 1: every ratio is 1, the algorithms differ only in normalisation --------------


def test_k1_gradients_differ_only_by_normalisation():
    torch.manual_seed(0)
    b, length, horizon = 5, 7, 9
    base = -torch.rand(b, length, dtype=torch.float64) * 3
    mask = torch.rand(b, length) < 0.7
    mask[:, 0] = True
    adv = torch.randn(b, dtype=torch.float64)
    lengths = mask.sum(-1, keepdim=True).double()

    def grad(name):
        logprobs = base.clone().requires_grad_(True)
        loss, _ = compute_policy_loss(
            name, logprobs, base.clone(), adv, mask, max_completion_length=horizon
        )
        loss.backward()
        return logprobs.grad

    reference = grad("grpo")
    # By hand: d loss / d logprob_it = -A_i / (B |s_i|) on completion tokens.
    expected = torch.where(mask, -adv[:, None] / (b * lengths), 0.0)
    torch.testing.assert_close(reference, expected, rtol=1e-12, atol=1e-12)
    for name in ("grpo_no_is", "gspo"):
        torch.testing.assert_close(grad(name), reference, rtol=1e-12, atol=1e-12)
    for name in ("tic", "ub_clip", "traj_is", "dr_grpo"):
        torch.testing.assert_close(
            grad(name), reference * lengths / horizon, rtol=1e-12, atol=1e-12
        )


# --- TIC specifics ------------------------------------------------------------------------


def tic_grad(deltas, advantages, horizon=T):
    logprobs, old, adv, mask = tensors(deltas, advantages, old=[[-1.0] * len(deltas[0])] * 2)
    loss, _ = compute_policy_loss(
        "tic", logprobs, old, adv, mask, epsilon_high=EPS_HIGH, max_completion_length=horizon
    )
    loss.backward()
    return loss.item(), logprobs.grad


def test_tic_cap_applies_whatever_the_sign_of_a():
    # rho = e^0.5 > 1.28: both sequences are capped, their gradient is exactly zero.
    loss, grad = tic_grad([[0.3, 0.2, None], [0.5, None, None]], [-1.0, 2.0])
    assert torch.equal(grad, torch.zeros_like(grad))
    assert loss == pytest.approx(-(-1.0 * 1.28 + 2.0 * 1.28) / (2 * T))


def test_tic_has_no_lower_clip():
    # rho = e^-8: far below 1 - eps_low, still the gradient rho A / T for each token.
    loss, grad = tic_grad([[-5.0, -3.0, None], [-0.1, None, None]], [-1.0, 0.5])
    rho0, rho1 = math.exp(-8.0), math.exp(-0.1)
    assert grad[0, 0].item() == pytest.approx(-(-1.0 * rho0) / (2 * T), rel=1e-12)
    assert grad[0, 1].item() == grad[0, 0].item()
    assert grad[0, 0].item() != 0.0
    assert grad[1, 0].item() == pytest.approx(-(0.5 * rho1) / (2 * T), rel=1e-12)
    assert loss == pytest.approx(-(-1.0 * rho0 + 0.5 * rho1) / (2 * T))


def test_tic_leaves_empty_completions_out_of_the_loss_value():
    # Row 1 has no tokens: rho = exp(0) = 1, but with nothing to move it must add nothing;
    # counted, its A = 2 would add 2 * 1 / (2T) to the objective.
    loss, grad = tic_grad([[0.1, None, None], [None, None, None]], [1.0, 2.0])
    assert loss == pytest.approx(-(1.0 * math.exp(0.1)) / (2 * T), rel=1e-12)
    assert grad[0, 0].item() == pytest.approx(-(1.0 * math.exp(0.1)) / (2 * T), rel=1e-12)
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("garbage", [0.0, 123.0, float("inf"), float("-inf"), float("nan")])
def test_padding_never_contributes(name, garbage):
    logprobs, old, adv, mask = tensors()
    loss, _ = compute_policy_loss(name, logprobs, old, adv, mask, max_completion_length=T)
    loss.backward()
    dirty = logprobs.detach().masked_fill(~mask, garbage).requires_grad_(True)
    dirty_old = old.masked_fill(~mask, -garbage)
    dirty_loss, _ = compute_policy_loss(name, dirty, dirty_old, adv, mask, max_completion_length=T)
    dirty_loss.backward()
    assert dirty_loss.item() == loss.item()
    assert torch.equal(dirty.grad, logprobs.grad)
    assert torch.equal(dirty.grad[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))


# --- long completions ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_completions_stay_finite(name, dtype):
    generator = torch.Generator().manual_seed(0)
    length = 4096
    signs = torch.randint(0, 2, (4, length), generator=generator) * 2 - 1
    signs[0], signs[1] = 1, -1  # all +5 and all -5 per token: log rho = +-20480
    old = -torch.rand(4, length, generator=generator) * 5
    logprobs = (old + 5.0 * signs).to(dtype).requires_grad_(True)
    mask = torch.ones(4, length, dtype=torch.bool)
    mask[3, 3000:] = False
    for adv in ([1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, -1.0, 1.0]):
        loss, stats = compute_policy_loss(
            name, logprobs, old.to(dtype), torch.tensor(adv, dtype=dtype), mask
        )
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(logprobs.grad).all()
        assert 0.0 <= stats["clip_fraction"] <= 1.0
        logprobs.grad = None


# --- errors -------------------------------------------------------------------------------


def test_errors():
    logprobs, old, adv, mask = tensors()
    with pytest.raises(ValueError, match="unknown algorithm"):
        compute_policy_loss("ppo", logprobs, old, adv, mask)
    with pytest.raises(ValueError, match="unknown aggregation"):
        compute_policy_loss("grpo", logprobs, old, adv, mask, aggregation="sum")
    with pytest.raises(ValueError, match="shorter than a completion"):
        compute_policy_loss("tic", logprobs, old, adv, mask, max_completion_length=3)
    with pytest.raises(ValueError, match="advantages"):
        compute_policy_loss("tic", logprobs, old, adv[:2], mask)
    with pytest.raises(ValueError, match="same shape"):
        compute_policy_loss("tic", logprobs, old[:, :2], adv, mask)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logprobs, old, mask, estimator="k4")
    with pytest.raises(ValueError, match="unknown algorithm"):
        default_aggregation("ppo")


# --- group advantages ---------------------------------------------------------------------


def test_group_advantages_hand_case():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [2.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    # Row 0: mean 1/2, Bessel std sqrt((4 * 1/4) / 3). Row 1: mean 1, std sqrt(2/3).
    s0, s1 = math.sqrt(1 / 3) + 1e-6, math.sqrt(2 / 3) + 1e-6
    expected = [[0.5 / s0, -0.5 / s0, 0.5 / s0, -0.5 / s0], [1 / s1, -1 / s1, 0.0, 0.0]]
    assert_close(group_advantages(rewards).tolist(), expected)


def test_group_advantages_equal_groups_are_zero():
    rewards = torch.tensor([[0.1, 0.1, 0.1], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    out = group_advantages(rewards)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(group_advantages(torch.tensor([[0.7]])), torch.zeros(1, 1))  # G = 1
    assert torch.equal(group_advantages(rewards, batch_std=True), torch.zeros_like(out))


def test_group_advantages_without_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0]], dtype=torch.float64)
    expected = [[0.75, -0.25, -0.25, -0.25], [0.0] * 4]
    assert_close(group_advantages(rewards, normalize_std=False).tolist(), expected)


def test_group_advantages_batch_std():
    rewards = torch.tensor([[1.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    # Batch [1, 0, 3, 3]: mean 1.75, squared deviations 6.75, Bessel std sqrt(6.75/3) = 1.5.
    s = 1.5 + 1e-6
    expected = [[0.5 / s, -0.5 / s], [0.0, 0.0]]
    assert_close(group_advantages(rewards, batch_std=True).tolist(), expected)


def test_group_advantages_length_corrected():
    rewards = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    lengths = torch.tensor([[2, 4, 5], [3, 3, 3]])
    # Row 0: R/|s| = [0.5, 0.25, 0], mean 0.25, Bessel std 0.25. Row 1 flat.
    s = 0.25 + 1e-6
    expected = [[0.25 / s, 0.0, -0.25 / s], [0.0, 0.0, 0.0]]
    assert_close(group_advantages(rewards, lengths=lengths).tolist(), expected)
    # Equal rewards over unequal lengths are no longer a flat group.
    out = group_advantages(torch.tensor([[1.0, 1.0]]), lengths=torch.tensor([[1, 2]]))
    assert out[0, 0].item() > 0 > out[0, 1].item()


# --- KL -------------------------------------------------------------------------------------


def test_kl_estimators_match_hand_formulas():
    lp = [[-1.0, -2.0, -0.5], [-0.3, -4.0, 9.0]]
    ref = [[-1.5, -1.0, -0.5], [-0.1, 7.0, -9.0]]
    mask = [[True, True, True], [True, False, False]]
    # r = pi_ref / pi.  k1 = -log r, k2 = (log r)^2 / 2, k3 = r - 1 - log r,
    # with derivatives w.r.t. log pi (d log r / d log pi = -1): 1, -log r, 1 - r.
    by_hand = {
        "k1": (lambda lr: -lr, lambda lr: 1.0),
        "k2": (lambda lr: lr * lr / 2, lambda lr: -lr),
        "k3": (lambda lr: math.exp(lr) - 1 - lr, lambda lr: 1 - math.exp(lr)),
    }
    assert set(KL_ESTIMATORS) == set(by_hand)
    for name, (f, df) in by_hand.items():
        value, grad = 0.0, []
        for lp_row, ref_row, m_row in zip(lp, ref, mask, strict=True):
            n = sum(m_row)
            value += sum(f(r - p) for p, r, m in zip(lp_row, ref_row, m_row, strict=True) if m) / (
                2 * n
            )
            grad.append(
                [
                    df(r - p) / (2 * n) if m else 0.0
                    for p, r, m in zip(lp_row, ref_row, m_row, strict=True)
                ]
            )
        logprobs = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
        kl = kl_penalty(logprobs, torch.tensor(ref, dtype=torch.float64), torch.tensor(mask), name)
        kl.backward()
        assert_close(kl.item(), value)
        assert_close(logprobs.grad.tolist(), grad)
