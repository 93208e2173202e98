"""The exact analysis under staleness: against ∇J(θ) at the current θ, with the rollout
sampled by the policy d updates old, computed as exact sums over every completion."""

from __future__ import annotations

import torch

from tic_grpo_cli.analysis import staleness_bias as sb
from tic_grpo_cli.analysis.enumeration import build_problem, make_policy, true_gradient

EXACT = 1e-12  # float64 agreement; the observed errors are ~1e-16


def test_the_uncapped_trajectory_ratio_follows_the_current_gradient_at_any_staleness():
    result = sb.run(sb.StalenessConfig(staleness=6))
    errors = {label: [r["estimators"][label]["err"] for r in result["rows"]]
              for label in result["notes"]}  # fmt: skip
    # d = 0: every ratio is 1 and every estimator is ∇J / T.
    assert all(e[0] < EXACT for e in errors.values())
    assert max(errors["tic@mu"]) < EXACT
    assert max(errors["decoupled_tic_untruncated"]) < EXACT
    # The token ratios, the no-IS gradient and the cap each leave ∇J(θ) once d > 0 ...
    assert min(errors["grpo@mu_unclipped"][1:]) > 1e-3
    assert min(errors["no_is@mu"][1:]) > 1e-3
    # ... the cap only once some completion's ratio passes 1 + ε (its mass is reported).
    for row, err in zip(result["rows"], errors["tic@mu_capped"], strict=True):
        assert (err > 1e-3) == (row["capped_mass"] > 0)


def test_the_analysis_moves_the_policy_by_exact_gradient_steps():
    """The behaviour policy of d = D is θ_0 and the current one θ_D: KL(μ‖θ) is 0 at d = 0
    and grows with d, here checked against the path rebuilt by hand."""
    cfg = sb.StalenessConfig(staleness=2, lr=0.5)
    result = sb.run(cfg)
    problem = build_problem(cfg.vocab, cfg.length, cfg.eos)
    logits_fn, n = make_policy(problem, cfg.policy, cfg.hidden)
    theta0 = cfg.init_scale * torch.randn(n, generator=torch.Generator().manual_seed(cfg.seed),
                                          dtype=torch.float64)  # fmt: skip
    theta1 = theta0 + 0.5 * true_gradient(problem, logits_fn, theta0)
    theta2 = theta1 + 0.5 * true_gradient(problem, logits_fn, theta1)
    from tic_grpo_cli.analysis.enumeration import token_logprobs

    def kl(mu, theta):
        lp_mu = token_logprobs(problem, logits_fn, mu).sum(-1)
        lp = token_logprobs(problem, logits_fn, theta).sum(-1)
        return float((lp_mu.exp() * (lp_mu - lp)).sum())

    kls = [r["kl_mu_theta"] for r in result["rows"]]
    assert kls[0] == 0.0
    assert abs(kls[1] - kl(theta1, theta2)) < EXACT
    assert abs(kls[2] - kl(theta0, theta2)) < EXACT


def test_gradient_bias_cli_with_staleness_writes_its_outputs(tmp_path, capsys):
    from tic_grpo_cli.analysis.gradient_bias import main

    assert main(["--staleness", "2", "--out", str(tmp_path)]) == 0
    assert "tic@mu" in capsys.readouterr().out
    for suffix in ("csv", "json", "png"):
        assert (tmp_path / f"staleness_bias.{suffix}").is_file()
