"""The exact gradient-bias analysis: enumeration, the TIC identity, GRPO's drift."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

from tic_grpo_cli.analysis import enumeration as en
from tic_grpo_cli.analysis import gradient_bias as gb
from tic_grpo_cli.analysis import main as analyze
from tic_grpo_cli.analysis.gradient_bias import BiasConfig

TOL = 1e-10  # float64 exactness; the observed errors are ~1e-16


def _setup(policy: str = "tabular", eos: bool = True, seed: int = 0):
    problem = en.build_problem(vocab=3, length=4, eos=eos)
    logits_fn, n_params = en.make_policy(problem, policy, hidden=5)
    gen = torch.Generator().manual_seed(seed)
    theta_old = torch.randn(n_params, generator=gen, dtype=en.DTYPE)
    return problem, logits_fn, theta_old, gen


def _far(theta_old: torch.Tensor, gen: torch.Generator, scale: float = 0.5) -> torch.Tensor:
    """A θ well away from θ_old: trajectory ratios past 1+ε and tokens outside the clip."""
    return theta_old + scale * torch.randn(theta_old.shape, generator=gen, dtype=en.DTYPE)


def _direction(problem, logits_fn, old, theta, label: str, **kw) -> torch.Tensor:
    d = gb.DIRECTION_BY_LABEL[label]
    return gb.expected_direction(d, problem, logits_fn, old, theta, 0.2, 0.28, **kw)


@pytest.fixture(scope="module")
def result() -> dict:
    return gb.run(BiasConfig(steps=8))


def _err(result: dict, k: int, label: str, target: str = "now") -> float:
    return result["rows"][k]["directions"][label][f"err_{target}"]


# --- the enumeration and the true gradient ----------------------------------------------


@pytest.mark.parametrize("policy", ["tabular", "mlp"])
@pytest.mark.parametrize("eos", [True, False])
def test_enumeration_is_a_distribution(policy: str, eos: bool) -> None:
    problem, logits_fn, theta, _ = _setup(policy, eos)
    # with EOS: 1 + 2 + 4 + 8 completions ending at EOS, 16 running to T; without: 3^4
    assert len(problem.completions) == (31 if eos else 81)
    assert len(set(problem.completions)) == len(problem.completions)
    probs = en.token_logprobs(problem, logits_fn, theta).sum(-1).exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    if eos:  # ragged lengths, so 1/|s| and 1/T really differ
        assert set(problem.lengths.tolist()) == {1, 2, 3, 4}


def test_reward_is_the_pattern_indicator() -> None:
    assert en.reward((1, 2)) == 1.0
    assert en.reward((2, 1, 1, 2)) == 1.0
    assert en.reward((2, 1, 0)) == 0.0
    assert en.reward((1,)) == 0.0


@pytest.mark.parametrize("policy", ["tabular", "mlp"])
def test_true_gradient_matches_finite_differences(policy: str) -> None:
    problem, logits_fn, theta, gen = _setup(policy)
    grad = en.true_gradient(problem, logits_fn, theta)
    h = 1e-5
    for _ in range(3):
        v = torch.randn(theta.shape, generator=gen, dtype=en.DTYPE)
        plus = en.objective(problem, logits_fn, theta + h * v)
        minus = en.objective(problem, logits_fn, theta - h * v)
        fd = float((plus - minus) / (2 * h))
        assert float(grad @ v) == pytest.approx(fd, rel=1e-7, abs=1e-10)


# --- the identities ---------------------------------------------------------------------


def test_weighting_by_advantage_equals_the_per_completion_sum() -> None:
    """One batched call with advantages A·B·P_old is Σ_s P_old(s)·(-∇loss_s), for every row,
    also where the clips are active (the loss terms are positively homogeneous in A)."""
    problem, logits_fn, theta_old, gen = _setup()
    old = gb.freeze_old(problem, logits_fn, theta_old)
    theta = _far(theta_old, gen)
    stats = gb.ratio_stats(problem, logits_fn, old, theta, BiasConfig())
    assert stats["tic_clipped_mass"] > 0.05 and stats["token_outside_clip"] > 0.05
    # the 8 completions whose ratios moved most, weighted by P_old: both clips are exercised
    log_rho = (en.token_logprobs(problem, logits_fn, theta) - old.logprobs).sum(-1)
    chosen = log_rho.abs().topk(8).indices
    weights = torch.zeros_like(old.probs)
    weights[chosen] = old.probs[chosen]
    for label in gb.DIRECTION_BY_LABEL:
        batched = _direction(problem, logits_fn, old, theta, label, weights=weights)
        looped = torch.zeros_like(batched)
        for s in chosen.tolist():
            only_s = torch.zeros_like(weights)
            only_s[s] = 1.0
            looped += weights[s] * _direction(problem, logits_fn, old, theta, label, weights=only_s)
        assert torch.allclose(batched, looped, rtol=1e-12, atol=1e-15), label


@pytest.mark.parametrize("policy", ["tabular", "mlp"])
def test_unclipped_tic_is_the_true_gradient_at_any_theta(policy: str) -> None:
    problem, logits_fn, theta_old, gen = _setup(policy)
    old = gb.freeze_old(problem, logits_fn, theta_old)
    theta = _far(theta_old, gen, scale=1.0)
    grad = en.true_gradient(problem, logits_fn, theta)
    tic = problem.length * _direction(problem, logits_fn, old, theta, "tic")
    assert gb.relative_error(tic, grad) < TOL
    # far from θ_old the true gradient has moved, so the identity is not trivial
    assert gb.relative_error(en.true_gradient(problem, logits_fn, theta_old), grad) > 0.1
    # any constant baseline leaves it exact: E_old[ρ ∇log P_θ] = ∇ Σ_s P_θ(s) = 0
    for baseline in (0.0, 0.7):
        other = dataclasses.replace(old, advantages=problem.rewards - baseline)
        tic_b = problem.length * _direction(problem, logits_fn, other, theta, "tic")
        assert gb.relative_error(tic_b, grad) < TOL


def test_unclipped_grpo_is_the_surrogate_gradient_not_the_true_one() -> None:
    """GRPO with token ratios and 1/T estimates ∇_θ E_old[Σ_t r_t(θ) A]: prefixes drawn from
    π_old. Checked against that surrogate written out independently of the library."""
    problem, logits_fn, theta_old, gen = _setup()
    old = gb.freeze_old(problem, logits_fn, theta_old)
    theta = _far(theta_old, gen).requires_grad_(True)
    ratios = (en.token_logprobs(problem, logits_fn, theta) - old.logprobs).exp() * problem.mask
    surrogate = (old.probs * ratios.sum(-1) * old.advantages).sum()
    (expected,) = torch.autograd.grad(surrogate, theta)
    grpo = problem.length * _direction(problem, logits_fn, old, theta, "grpo_T_unclipped")
    assert gb.relative_error(grpo, expected) < TOL
    assert gb.relative_error(grpo, en.true_gradient(problem, logits_fn, theta)) > 1e-3


# --- the run: θ_old -> θ_k --------------------------------------------------------------


def test_every_one_over_T_row_is_the_old_gradient_at_k0(result: dict) -> None:
    # at θ = θ_old every ratio is 1: the algorithms differ only in their normalisation
    for label, d in gb.DIRECTION_BY_LABEL.items():
        if d.per_T:
            assert _err(result, 0, label, "old") < TOL, label


def test_tic_tracks_the_current_gradient(result: dict) -> None:
    for row in result["rows"][1:]:
        assert row["grad_drift"] > 1e-3  # θ_k really differs from θ_old
        assert row["directions"]["tic"]["err_now"] < TOL


def test_grpo_drifts_from_the_current_gradient(result: dict) -> None:
    errors = [_err(result, k, "grpo_T_unclipped") for k in range(1, 9)]
    assert all(b > a for a, b in itertools.pairwise(errors))
    assert errors[-1] > 5 * errors[0] > 1e-3  # drift of order θ_k - θ_old, not float noise
    assert _err(result, 8, "grpo_T") > _err(result, 1, "grpo_T")


def test_one_over_length_changes_the_estimand(result: dict) -> None:
    # 1/|s| weights short completions up: even at θ_old the direction is not ∇J's
    assert result["rows"][0]["directions"]["grpo"]["cos_old"] < 0.99
    assert result["rows"][0]["directions"]["grpo_no_is"]["cos_old"] < 0.99


def test_no_is_stays_at_the_old_gradient(result: dict) -> None:
    problem, logits_fn, theta_old, gen = _setup()
    old = gb.freeze_old(problem, logits_fn, theta_old)
    for label in ("grpo_no_is", "grpo_no_is_T"):
        at_old = _direction(problem, logits_fn, old, theta_old, label)
        assert torch.equal(_direction(problem, logits_fn, old, _far(theta_old, gen), label), at_old)
    for row in result["rows"]:
        assert row["directions"]["grpo_no_is_T"]["err_old"] < TOL
    # ...so its error to the current gradient grows with k, like GRPO's
    assert _err(result, 8, "grpo_no_is_T") > _err(result, 1, "grpo_no_is_T") > 1e-3


def test_analyze_gradient_bias_writes_table_csv_json_and_plot(tmp_path, capsys) -> None:
    assert analyze(["gradient-bias", "--steps", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gradient_bias.json").read_text())
    assert [row["k"] for row in data["rows"]] == [0, 1]
    lines = (tmp_path / "gradient_bias.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * len(gb.DIRECTIONS)
    assert (tmp_path / "gradient_bias.png").stat().st_size > 10_000
    assert "grpo_no_is" in capsys.readouterr().out


def test_analyze_rejects_an_unknown_analysis(capsys) -> None:
    assert analyze(["no-such-analysis"]) == 2
    assert "gradient-bias" in capsys.readouterr().err
