"""The gradient-bias check under staleness: which gradient does each estimator follow when
the rollout was sampled by a policy d updates old?

`tic-grpo analyze gradient-bias --staleness D` (gradient_bias.py dispatches here). On the
enumerable policy of enumeration.py, θ_0 takes D exact gradient-ascent steps to θ_D, the
current policy. For d = 0..D the behaviour policy is μ = θ_{D-d}: the rollout was sampled d
updates ago. At θ_D, each estimator's expected update E_{s~μ}[-∇ loss_s(θ_D)] is an exact
float64 sum over all completions (as in gradient_bias.py, the advantage A = R - E_μ[R]) and
is compared with ∇J(θ_D), the gradient the update should follow:

- anchored at μ (trainer.old_logprobs=sampler): GRPO's token ratios π_θ/μ, clipped or not;
  TIC-GRPO's trajectory ratio ρ = P_θ/P_μ, capped at 1+ε_high or not; the no-IS gradient,
  taken at μ itself;
- anchored at the proximal policy, the weights at the update's start (here θ_D itself:
  recompute), weighted by proximal/μ: per token truncated at C (decoupled PPO), per
  completion truncated at C or not (its trajectory form).

Uncapped ρ gives ∇J(θ_D) exactly for every d, since E_μ[ρ ∇log P_θ A] = Σ_s ∇P_θ(s) A(s)
and the baseline term vanishes (Σ_s ∇P_θ(s) = 0): the paper's claim, with the rollout any
number of updates old. The table shows how far the cap, the token ratios and the no-IS
gradient move away from it as d grows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tic_grpo_cli.algorithms import compute_policy_loss, correction_weights
from tic_grpo_cli.analysis.enumeration import (
    DTYPE,
    Problem,
    build_problem,
    make_policy,
    objective,
    token_logprobs,
    true_gradient,
)

SUM_NORM = "seq_mean_token_sum_norm"  # 1/T everywhere: T x direction is on ∇J's scale
UNCAPPED = 1e9  # a bound no ratio reaches: turns a clip or truncation off


@dataclass(frozen=True)
class Estimator:
    """One row: an algorithm, what its ratio is taken against, and its bounds."""

    label: str
    algorithm: str
    anchor: str = "behaviour"  # behaviour (mu) | proximal (the current weights)
    capped: bool = True  # the algorithm's own clip / cap
    correction: str = "none"  # with the proximal anchor: token_tis | seq_tis
    corrected_cap: bool = True  # truncate the proximal/mu weight at C
    note: str = ""


ESTIMATORS = (
    Estimator("grpo@mu", "grpo", note="token ratios π_θ/μ, PPO clip"),
    Estimator("grpo@mu_unclipped", "grpo", capped=False, note="token ratios π_θ/μ"),
    Estimator("no_is@mu", "grpo_no_is", note="∇log π at μ, no ratio"),
    Estimator("tic@mu", "tic", capped=False, note="ρ = P_θ/P_μ, no cap (the theorem)"),
    Estimator("tic@mu_capped", "tic", note="min(ρ, 1+ε_high)"),
    Estimator(
        "decoupled_grpo",
        "grpo",
        "proximal",
        correction="token_tis",
        note="clip vs proximal, × min(π_prox/μ, C) per token",
    ),
    Estimator(
        "decoupled_tic",
        "tic",
        "proximal",
        correction="seq_tis",
        note="cap vs proximal, × min(P_prox/P_μ, C)",
    ),
    Estimator(
        "decoupled_tic_untruncated",
        "tic",
        "proximal",
        correction="seq_tis",
        corrected_cap=False,
        note="cap vs proximal, × P_prox/P_μ",
    ),
)


@dataclass(frozen=True)
class StalenessConfig:
    vocab: int = 3
    length: int = 4
    eos: bool = True
    policy: str = "tabular"
    hidden: int = 8
    init_scale: float = 1.0
    staleness: int = 8  # D: the oldest behaviour policy is D updates old
    lr: float = 1.0  # step of the exact gradient ascent θ_t -> θ_t+1
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    correction_cap: float = 2.0  # C, as algorithm.rollout_correction_c
    seed: int = 0


def expected_update(
    est: Estimator, problem: Problem, logits_fn: Callable, theta: torch.Tensor,
    mu: torch.Tensor, cfg: StalenessConfig,
) -> torch.Tensor:  # fmt: skip
    """E_{s~μ}[-∇ loss_s] at θ (at μ for the no-IS gradient), in one batched call of the
    project's loss: each term is positively homogeneous in its advantage, so A_s · S · P_μ(s)
    turns the batch mean into the expectation."""
    with torch.no_grad():
        mu_logprobs = token_logprobs(problem, logits_fn, mu)
        proximal = token_logprobs(problem, logits_fn, theta)
        probs = mu_logprobs.sum(-1).exp()
        advantages = problem.rewards - (probs * problem.rewards).sum()
    at_mu = est.algorithm == "grpo_no_is"
    at = (mu if at_mu else theta).detach().requires_grad_(True)
    old = proximal if est.anchor == "proximal" else mu_logprobs
    correction = None
    if est.correction != "none":
        cap = cfg.correction_cap if est.corrected_cap else UNCAPPED
        correction = correction_weights(est.correction, proximal, mu_logprobs, problem.mask, cap)
    eps = (cfg.epsilon_low, cfg.epsilon_high) if est.capped else (UNCAPPED, UNCAPPED)
    loss, _ = compute_policy_loss(
        est.algorithm, token_logprobs(problem, logits_fn, at), old,
        advantages * probs * len(probs), problem.mask,
        epsilon_low=eps[0], epsilon_high=eps[1], max_completion_length=problem.length,
        aggregation=SUM_NORM, correction=correction,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(-loss, at)
    return grad


def run(cfg: StalenessConfig | None = None, out: Path | str | None = None) -> dict:
    """θ_0 -> θ_D by exact gradient ascent; for every d, each estimator at θ_D with the
    rollout sampled by θ_{D-d}, against ∇J(θ_D)."""
    cfg = cfg or StalenessConfig()
    if cfg.staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {cfg.staleness}")
    if cfg.correction_cap <= 1:
        raise ValueError(f"the correction cap C must be > 1, got {cfg.correction_cap}")
    problem = build_problem(cfg.vocab, cfg.length, cfg.eos)
    logits_fn, n_params = make_policy(problem, cfg.policy, cfg.hidden)
    generator = torch.Generator().manual_seed(cfg.seed)
    path = [cfg.init_scale * torch.randn(n_params, generator=generator, dtype=DTYPE)]
    for _ in range(cfg.staleness):
        path.append(path[-1] + cfg.lr * true_gradient(problem, logits_fn, path[-1]))
    theta = path[-1]
    grad_now = true_gradient(problem, logits_fn, theta)
    rows = []
    for d in range(cfg.staleness + 1):
        mu = path[-1 - d]
        with torch.no_grad():
            mu_logprobs = token_logprobs(problem, logits_fn, mu)
            log_rho = (token_logprobs(problem, logits_fn, theta) - mu_logprobs).sum(-1)
        probs = mu_logprobs.sum(-1).exp()
        row = {
            "d": d,
            "kl_mu_theta": float((probs * -log_rho).sum()),
            "capped_mass": float((probs * (log_rho.exp() > 1 + cfg.epsilon_high)).sum()),
            "truncated_mass": float((probs * (log_rho.exp() > cfg.correction_cap)).sum()),
            "estimators": {},
        }
        for est in ESTIMATORS:
            g = expected_update(est, problem, logits_fn, theta, mu, cfg)
            row["estimators"][est.label] = {
                "cos": float(g @ grad_now / (g.norm() * grad_now.norm())),
                "err": float((problem.length * g - grad_now).norm() / grad_now.norm()),
            }
        rows.append(row)
    result = {"config": asdict(cfg), "J": float(objective(problem, logits_fn, theta)),
              "rows": rows, "notes": {e.label: e.note for e in ESTIMATORS}}  # fmt: skip
    if out is not None:
        write_outputs(result, Path(out))
    return result


def table(result: dict) -> str:
    """Relative error ‖T·E[update] − ∇J(θ)‖ / ‖∇J(θ)‖ per estimator (rows) and d (columns)."""
    rows = result["rows"]
    head = "| estimator | " + " | ".join(f"d={r['d']}" for r in rows) + " |"
    lines = [head, "|" + "---|" * (1 + len(rows))]
    for label, note in result["notes"].items():
        cells = " | ".join(f"{r['estimators'][label]['err']:.2e}" for r in rows)
        lines.append(f"| {label} ({note}) | {cells} |")
    for key, text in (("kl_mu_theta", "KL(μ‖θ)"), ("capped_mass", "P_μ(ρ > 1+ε)"),
                      ("truncated_mass", "P_μ(ρ > C)")):  # fmt: skip
        lines.append(f"| {text} | " + " | ".join(f"{r[key]:.3f}" for r in rows) + " |")
    return "\n".join(lines)


def write_outputs(result: dict, out: Path) -> None:
    """staleness_bias.json, .csv and .png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "staleness_bias.json").write_text(json.dumps(result, indent=2))
    with open(out / "staleness_bias.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["d", "estimator", "cos", "err", "kl_mu_theta", "capped_mass"])
        for r in result["rows"]:
            for label, m in r["estimators"].items():
                writer.writerow([r["d"], label, m["cos"], m["err"], r["kl_mu_theta"],
                                 r["capped_mass"]])  # fmt: skip
    _plot(result, out / "staleness_bias.png")


def _plot(result: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ds = [r["d"] for r in result["rows"]]
    for i, (label, note) in enumerate(result["notes"].items()):
        errs = [max(r["estimators"][label]["err"], 1e-17) for r in result["rows"]]
        ax.plot(ds, errs, marker="o", color=f"C{i}", label=f"{label}: {note}")
    ax.set_yscale("log")
    ax.set(xlabel="staleness d (updates since the behaviour policy sampled)",
           ylabel="‖T·E[update] − ∇J(θ)‖ / ‖∇J(θ)‖",
           title="which gradient each estimator follows, rollout d updates old (exact)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.savefig(path, dpi=100)
