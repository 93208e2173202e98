"""CISPO, GMPO and DPPO against closed forms worked out by hand (docs/algorithms.md).

The table of completions, advantages and old log-probs is test_core.py's. Expected
values come from loops over python floats and each objective's analytic derivative; the
log-ratio of a token is recomputed as (old + d) - old in float64, exactly as the tensors
hold it, so a ratio on a clip boundary falls on the same side here and in the code.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.algorithms.test_core import (
    ADVANTAGES,
    DELTAS,
    EPS_HIGH,
    EPS_LOW,
    LENGTHS,
    OLD,
    TOTAL,
    B,
    T,
    assert_close,
    ppo,
    run,
    sequence_level,
    tensors,
)
from tests.conftest import SMALL_RUN, compose_config
from tic_grpo_cli.algorithms import compute_policy_loss
from tic_grpo_cli.config.validation import validate_train


def cells():
    """(row, column, log-ratio as stored, old log-prob, A) for every completion token."""
    for i, (row, old_row, a) in enumerate(zip(DELTAS, OLD, ADVANTAGES, strict=True)):
        for j, (d, o) in enumerate(zip(row, old_row, strict=True)):
            if d is not None:
                yield i, j, (o + d) - o, o, a


def empty_grad():
    return [[0.0] * len(row) for row in DELTAS]


# --- CISPO ------------------------------------------------------------------------------


def cispo_expected(eps_low, eps_high):
    """Objective 1/N sum sg(clip(r)) A log pi: value w A (o + d), d/d log pi = w A."""
    value, grad = 0.0, empty_grad()
    for i, j, d, o, a in cells():
        w = min(max(math.exp(d), 1 - eps_low), 1 + eps_high)
        value += w * a * (o + d) / TOTAL
        grad[i][j] = -w * a / TOTAL
    return -value, grad


@pytest.mark.parametrize(("eps_low", "eps_high"), [(EPS_LOW, EPS_HIGH), (1.0, 3.0)])
def test_cispo_value_and_gradient(eps_low, eps_high):
    logprobs, old, adv, mask = tensors()
    loss, _ = compute_policy_loss(
        "cispo", logprobs, old, adv, mask, epsilon_low=eps_low, epsilon_high=eps_high
    )
    loss.backward()
    expected_loss, expected_grad = cispo_expected(eps_low, eps_high)
    assert_close(loss.item(), expected_loss)
    assert_close(logprobs.grad.tolist(), expected_grad)


def test_cispo_clip_never_zeroes_a_gradient():
    """Every ratio of the table outside [0.8, 1.28] still moves its token: PPO's clip would
    zero row 0 t1, row 1 t1, row 2 t0 t1, row 4 t0; CISPO only bounds their weight."""
    _, grad, stats = run("cispo")
    _, grpo_grad, _ = run("grpo")
    for i, j, d, _, a in cells():
        assert grad[i][j] != 0.0
        weight = min(max(math.exp(d), 1 - EPS_LOW), 1 + EPS_HIGH)
        assert grad[i][j] == pytest.approx(-weight * a / TOTAL, rel=1e-12)
    assert sum(g == 0.0 for i, j, *_ in cells() for g in [grpo_grad[i][j]]) == 5
    # Truncated weights, whatever the sign of A: log-ratios above log 1.28 = 0.247: row 0
    # 0.3; row 1 0.35; row 2 0.35 0.3; row 3 0.4 0.3 0.3. Below log 0.8 = -0.223: row 0 -0.4;
    # row 1 -0.5; row 4 -0.4; row 5 -0.6 -0.3.
    assert stats["clip_fraction_high"] == pytest.approx(7 / 18)
    assert stats["clip_fraction_low"] == pytest.approx(5 / 18)


# --- GMPO -------------------------------------------------------------------------------


def gmpo_expected(eps_low, eps_high):
    """mean_i A_i exp(mean_t c_t), c_t the log-ratio clipped one-sidedly by the sign of A."""
    value, grad = 0.0, empty_grad()
    for i, a in enumerate(ADVANTAGES):
        row = [(j, d) for k, j, d, _, _ in cells() if k == i]
        clipped = [min(d, eps_high) if a > 0 else max(d, -eps_low) for _, d in row]
        s = math.exp(sum(clipped) / len(row))
        value += a * s / B
        for j, d in row:
            inside = d <= eps_high if a > 0 else d >= -eps_low
            grad[i][j] = -a * s / (B * len(row)) if inside else 0.0
    return -value, grad


def test_gmpo_value_and_gradient():
    loss, grad, stats = run("gmpo")
    expected_loss, expected_grad = gmpo_expected(EPS_LOW, EPS_HIGH)
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad)
    # Clipped: A > 0 above 0.28: row 0 t1, row 2 t0 t1; A < 0 below -0.2: row 1 t1, row 4 t0
    # (row 4 t1 sits on -0.2 to rounding, on the side the stored log-ratio puts it).
    row4_t1 = (OLD[4][1] + DELTAS[4][1]) - OLD[4][1]
    expected_low = 2 + (row4_t1 < -EPS_LOW)
    assert stats["clip_fraction_high"] == pytest.approx(3 / 18)
    assert stats["clip_fraction_low"] == pytest.approx(expected_low / 18)


def test_gmpo_spot_value():
    # Row 5 by hand: A = 0.9, log-ratios -0.6, -0.3, nothing clipped: 0.9 e^-0.45.
    _, grad = gmpo_expected(EPS_LOW, EPS_HIGH)
    assert grad[5][0] == pytest.approx(-0.9 * math.exp(-0.45) / (B * 2))


@pytest.mark.parametrize("delta", [0.1, -0.3, 0.5])
def test_gmpo_does_not_depend_on_completion_length(delta):
    """Completions of 1, 7 and 40 tokens, every token with log-ratio delta, same A: the
    same term (A e^min(delta, eps)), and the same total gradient per completion."""
    lengths, length = [1, 7, 40], 40
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    old = torch.full((3, length), -1.3, dtype=torch.float64)
    logprobs = (old + delta).requires_grad_(True)
    adv = torch.full((3,), 0.6, dtype=torch.float64)
    loss, _ = compute_policy_loss("gmpo", logprobs, old, adv, mask, 0.4, 0.4)
    loss.backward()
    assert loss.item() == pytest.approx(-0.6 * math.exp(min(delta, 0.4)), rel=1e-12)
    per_completion = logprobs.grad.sum(-1)
    expected = -0.6 * math.exp(delta) / 3 if delta <= 0.4 else 0.0
    torch.testing.assert_close(
        per_completion, torch.full((3,), expected, dtype=torch.float64), rtol=1e-12, atol=0
    )


# --- DPPO -------------------------------------------------------------------------------

DELTA_LOW, DELTA_HIGH = 0.05, 0.1


def dppo_expected(delta_low, delta_high):
    """1/N sum M_t r_t A: M_t = 0 when the sampled token's probability moved more than delta
    in the direction A pushes it (up for A > 0, down for A < 0)."""
    value, grad = 0.0, empty_grad()
    masked = []
    for i, j, d, o, a in cells():
        moved = math.exp(o + d) - math.exp(o)
        if (a > 0 and moved > delta_high) or (a < 0 and -moved > delta_low):
            masked.append((i, j))
            continue
        value += math.exp(d) * a / TOTAL
        grad[i][j] = -math.exp(d) * a / TOTAL
    return -value, grad, masked


def test_dppo_value_gradient_and_mask():
    loss, grad, stats = run("dppo", epsilon_low=DELTA_LOW, epsilon_high=DELTA_HIGH)
    expected_loss, expected_grad, masked = dppo_expected(DELTA_LOW, DELTA_HIGH)
    # By hand from the table (p = e^(o+d) - e^o): A > 0 row 2 t0 (+0.154); A < 0 row 1 t1
    # (-0.053), row 4 t0 (-0.121) and t2 (-0.058). Row 0 t2 (-0.2, A > 0) and row 3 t0
    # (+0.181, A < 0) move back towards pi_old's side: never masked.
    assert masked == [(1, 1), (2, 0), (4, 0), (4, 2)]
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad)
    for i, j in masked:
        assert grad[i][j] == 0.0
    assert stats["clip_fraction_high"] == pytest.approx(1 / 18)
    assert stats["clip_fraction_low"] == pytest.approx(3 / 18)


def run_with(name, logprobs, old, adv, **kwargs):
    logprobs = torch.tensor(logprobs, dtype=torch.float64, requires_grad=True)
    old = torch.tensor(old, dtype=torch.float64)
    mask = torch.ones_like(old, dtype=torch.bool)
    loss, _ = compute_policy_loss(name, logprobs, old, torch.tensor(adv).double(), mask, **kwargs)
    loss.backward()
    return logprobs.grad[:, 0].tolist()


def test_dppo_bounds_probability_mass_not_ratios():
    """The paper's example (Sec. 4.2): a rare token 1e-4 -> 1e-2 (ratio 100) moves 0.01 of
    mass and keeps its gradient; a likely one 0.99 -> 0.80 (ratio 0.81) moves 0.19 and,
    with A < 0, is masked. PPO's ratio clip does the opposite."""
    logprobs = [[math.log(1e-2)], [math.log(0.80)]]
    old = [[math.log(1e-4)], [math.log(0.99)]]
    adv = [1.0, -1.0]
    dppo = run_with("dppo", logprobs, old, adv, epsilon_low=0.15, epsilon_high=0.15)
    assert dppo[0] == pytest.approx(-100.0 / 2, rel=1e-9)  # -r A / N
    assert dppo[1] == 0.0
    ppo = run_with("dapo", logprobs, old, adv, epsilon_low=0.2, epsilon_high=0.28)
    assert ppo[0] == 0.0
    assert ppo[1] == pytest.approx(0.80 / 0.99 / 2, rel=1e-9)


# --- K = 1: every ratio is 1 ------------------------------------------------------------


def test_k1_identities():
    """At r = 1: DPPO masks nothing and is DAPO; GMPO's geometric mean is 1 and it is GRPO;
    CISPO's weight is 1, so its gradient is DAPO's (its value is the token mean of A log pi)."""
    torch.manual_seed(0)
    b, length = 5, 7
    base = -torch.rand(b, length, dtype=torch.float64) * 3
    mask = torch.rand(b, length) < 0.7
    mask[:, 0] = True
    adv = torch.randn(b, dtype=torch.float64)

    def loss_and_grad(name):
        logprobs = base.clone().requires_grad_(True)
        loss, _ = compute_policy_loss(name, logprobs, base.clone(), adv, mask)
        loss.backward()
        return loss.item(), logprobs.grad

    n = mask.sum().item()
    # By hand: DAPO's d loss / d logprob_it = -A_i / N, GRPO's -A_i / (B |s_i|).
    dapo = torch.where(mask, -adv[:, None] / n, 0.0)
    grpo = torch.where(mask, -adv[:, None] / (b * mask.sum(-1, keepdim=True)), 0.0)
    for name, expected in (("dppo", dapo), ("cispo", dapo), ("gmpo", grpo)):
        torch.testing.assert_close(loss_and_grad(name)[1], expected, rtol=1e-12, atol=1e-12)
    assert loss_and_grad("dppo")[0] == pytest.approx(-(adv[:, None] * mask).sum().item() / n)
    assert loss_and_grad("gmpo")[0] == pytest.approx(-adv.mean().item())
    cispo_value = (torch.where(mask, base, 0.0).sum(-1) * adv).sum().item() / n
    assert loss_and_grad("cispo")[0] == pytest.approx(-cispo_value)


def test_lengths_table_is_the_shared_one():
    assert LENGTHS == [4, 2, 3, 4, 3, 2] and TOTAL == 18


# --- traj_is without a lower clip (epsilon_low = 1) -------------------------------------


def test_traj_is_with_epsilon_low_1_has_no_lower_clip():
    """clip(rho, 0, 1+eh): for A < 0 the term is rho A whatever rho (the min never picks the
    clip, rho > 0), so rows 1, 3, 4 keep the gradient rho A / T; rows with A > 0 are PPO's."""

    def elem(log_rho, a):
        r = math.exp(log_rho)
        return (a * r, a * r) if a < 0 else ppo(log_rho, a)

    loss, grad, stats = run("traj_is", epsilon_low=1.0)
    expected_loss, expected_grad = sequence_level(elem, lambda i: 1 / (B * T))
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad)
    assert stats["clip_fraction_low"] == 0.0
    # Row 4: rho = e^-0.7 < 0.8 with A < 0, which the default eps_low = 0.2 would clip.
    assert grad[4][0] != 0.0 and run("traj_is")[1][4][0] == 0.0


def test_epsilon_low_1_is_a_valid_setting():
    validate_train(compose_config(*SMALL_RUN, "algorithm=traj_is", "algorithm.epsilon_low=1"))
