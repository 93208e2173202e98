"""Exact gradient-bias check: which gradient does each algorithm's update estimate?

The TIC-GRPO paper (arXiv 2508.02833, "Theory") claims that, inside one inner loop, the
expected GRPO update is ``∇J(θ_old)`` plus a drift that grows with the number of inner
steps, while the expected (unclipped) TIC-GRPO update is ``∇J(θ)`` at the current
parameters, exactly. Sampling noise would swamp that claim, so we take a policy small
enough to list every completion and compute every expectation as an exact, float64 sum
over them:

- ``J(θ) = Σ_s P_θ(s) R(s)`` and ``∇J(θ)`` by autograd through that sum;
- the expected update of an algorithm at ``θ`` is ``E_{s~π_old}[-∇_θ loss_s(θ)]``, obtained
  from one batched call of the project's ``compute_policy_loss`` over all completions,
  each completion's advantage multiplied by ``B · P_old(s)`` (every loss term is positively
  homogeneous in the advantage, so this weights the batch mean into the exact expectation).

Advantages are ``A(s) = R(s) - E_old[R]``: the group-normalised advantage has no closed-form
expectation, and a constant baseline leaves both ``∇J`` and the TIC identity unchanged,
because ``E_old[ρ ∇log P_θ] = Σ_s ∇P_θ(s) = ∇1 = 0``.

Run: ``python -m tic_grpo_cli.analysis.gradient_bias --steps 16 --out DIR``. The enumerated
problem and policy are in enumeration.py, the tables, csv/json and plot in
gradient_bias_report.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tic_grpo_cli.algorithms import compute_policy_loss
from tic_grpo_cli.analysis.enumeration import (
    DTYPE,
    Problem,
    build_problem,
    make_policy,
    objective,
    token_logprobs,
    true_gradient,
)
from tic_grpo_cli.analysis.gradient_bias_report import print_table, write_outputs

DEFAULT_OUT = Path("outputs/analysis/gradient_bias")
UNCLIPPED = 1e9  # an epsilon no ratio reaches: turns every clip off


@dataclass(frozen=True)
class BiasConfig:
    vocab: int = 3  # tokens, EOS included when eos=True
    length: int = 4  # T, the maximum completion length
    eos: bool = True  # ragged lengths make 1/|s| and 1/T differ
    policy: str = "tabular"  # "tabular": a logit row per prefix; "mlp": shared weights
    hidden: int = 8  # mlp width
    init_scale: float = 1.0  # std of the random θ_old
    steps: int = 16  # K, inner updates taken from θ_old
    lr: float = 1.0
    path: str = "grpo"  # the direction the inner updates follow (a row label below)
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    seed: int = 0


@dataclass(frozen=True)
class Direction:
    """One row of the report: an algorithm's expected update direction."""

    label: str
    algorithm: str
    aggregation: str | None = None
    clipped: bool = True
    at_old: bool = False  # grpo_no_is: gradient taken at θ_old whatever θ is
    per_T: bool = True  # 1/T normalisation: ×T gives the natural scale; else fit at k=0
    note: str = ""  # for the plot legend


SUM_NORM = "seq_mean_token_sum_norm"  # 1/T, the constant the paper puts in front of TIC
DIRECTIONS = (
    Direction("grpo", "grpo", per_T=False, note="token ratios, PPO clip, 1/|s|"),
    Direction("grpo_T", "grpo", SUM_NORM, note="token ratios, PPO clip, 1/T"),
    Direction("grpo_T_unclipped", "grpo", SUM_NORM, clipped=False, note="token ratios, 1/T"),
    Direction("grpo_no_is", "grpo_no_is", at_old=True, per_T=False, note="at θ_old, 1/|s|"),
    Direction("grpo_no_is_T", "grpo_no_is", SUM_NORM, at_old=True, note="at θ_old, 1/T"),
    Direction("tic", "tic", clipped=False, note="trajectory ratio ρ, no cap, 1/T"),
    Direction("tic_clipped", "tic", note="min(ρ, 1+ε_high), 1/T"),
)
DIRECTION_BY_LABEL = {d.label: d for d in DIRECTIONS}


# --- expected update directions ---------------------------------------------------------


@dataclass(frozen=True)
class OldPolicy:
    """What the rollout fixed: θ_old, its token log-probs, P_old(s) and the advantages."""

    theta: torch.Tensor
    logprobs: torch.Tensor  # [S, T]
    probs: torch.Tensor  # [S]
    advantages: torch.Tensor  # [S], R - E_old[R]


def freeze_old(problem: Problem, logits_fn: Callable, theta_old: torch.Tensor) -> OldPolicy:
    with torch.no_grad():
        logprobs = token_logprobs(problem, logits_fn, theta_old)
    probs = logprobs.sum(-1).exp()
    advantages = problem.rewards - (probs * problem.rewards).sum()
    return OldPolicy(theta_old.detach(), logprobs, probs, advantages)


def expected_direction(
    direction: Direction,
    problem: Problem,
    logits_fn: Callable,
    old: OldPolicy,
    theta: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_s w_s · (-∇_θ loss_s(θ)), by default w = P_old: the algorithm's expected update.

    Computed in one call: the library averages its B terms, and each term is positively
    homogeneous in the advantage, so advantage A_s · B · w_s turns the mean into Σ_s w_s (·).
    """
    theta = (old.theta if direction.at_old else theta).detach().requires_grad_(True)
    weights = old.probs if weights is None else weights
    eps_low, eps_high = (epsilon_low, epsilon_high) if direction.clipped else (UNCLIPPED,) * 2
    loss, _ = compute_policy_loss(
        direction.algorithm,
        token_logprobs(problem, logits_fn, theta),
        old.logprobs,
        old.advantages * weights * len(weights),
        problem.mask,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        max_completion_length=problem.length,
        aggregation=direction.aggregation,
    )
    (grad,) = torch.autograd.grad(-loss, theta)
    return grad


# --- comparing directions ---------------------------------------------------------------


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def relative_error(estimate: torch.Tensor, target: torch.Tensor) -> float:
    return float((estimate - target).norm() / target.norm())


def ratio_stats(
    problem: Problem, logits_fn: Callable, old: OldPolicy, theta: torch.Tensor, cfg: BiasConfig
) -> dict[str, float]:
    """How far θ is from θ_old, in the quantities the clips look at (P_old-weighted)."""
    with torch.no_grad():
        log_ratio = token_logprobs(problem, logits_fn, theta) - old.logprobs
    rho = log_ratio.sum(-1).exp()
    r = log_ratio.exp()
    outside = ((r < 1 - cfg.epsilon_low) | (r > 1 + cfg.epsilon_high)) & problem.mask
    token_share = outside.sum(-1) / problem.lengths
    return {
        "rho_max": float(rho.max()),
        "rho_min": float(rho.min()),
        "tic_clipped_mass": float((old.probs * (rho > 1 + cfg.epsilon_high)).sum()),
        "token_outside_clip": float((old.probs * token_share).sum()),
        "kl_old_new": float((old.probs * -log_ratio.sum(-1)).sum()),
    }


def _scales(
    directions: dict[str, torch.Tensor], grad_old: torch.Tensor, length: int
) -> dict[str, float]:
    """The factor that puts each row on ∇J's scale: T for 1/T rows; for 1/|s| rows, which
    estimate a differently weighted objective, the least-squares fit to ∇J(θ_old) at k=0,
    then held fixed so that only the drift over k shows."""
    scales = {}
    for label, d in directions.items():
        per_T = DIRECTION_BY_LABEL[label].per_T
        scales[label] = float(length) if per_T else float(d @ grad_old / (d @ d))
    return scales


# --- the experiment ---------------------------------------------------------------------

MAX_COMPLETIONS = 100_000  # enumeration is exponential in T; beyond this it is not "tiny"


def check(cfg: BiasConfig) -> None:
    if cfg.vocab < 3 or cfg.length < 2:
        raise ValueError("the reward pattern (1, 2) needs vocab >= 3 and length >= 2")
    if cfg.vocab**cfg.length > MAX_COMPLETIONS:
        raise ValueError(f"vocab**length = {cfg.vocab**cfg.length} is too many to enumerate")
    if cfg.path not in DIRECTION_BY_LABEL:
        raise ValueError(f"path must be one of {sorted(DIRECTION_BY_LABEL)}, got {cfg.path!r}")
    if cfg.steps < 0 or cfg.policy not in ("tabular", "mlp"):
        raise ValueError(f"need steps >= 0 and policy tabular|mlp, got {cfg.steps}, {cfg.policy}")


def run(cfg: BiasConfig | None = None, out: Path | str | None = None) -> dict:
    """θ_old -> K inner updates; at every θ_k, every row against ∇J(θ_k) and ∇J(θ_old)."""
    cfg = cfg or BiasConfig()
    check(cfg)
    problem = build_problem(cfg.vocab, cfg.length, cfg.eos)
    logits_fn, n_params = make_policy(problem, cfg.policy, cfg.hidden)
    generator = torch.Generator().manual_seed(cfg.seed)
    theta_old = cfg.init_scale * torch.randn(n_params, generator=generator, dtype=DTYPE)
    old = freeze_old(problem, logits_fn, theta_old)
    grad_old = true_gradient(problem, logits_fn, theta_old)

    def directions_at(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            d.label: expected_direction(
                d, problem, logits_fn, old, theta, cfg.epsilon_low, cfg.epsilon_high
            )
            for d in DIRECTIONS
        }

    theta = theta_old.clone()
    scales: dict[str, float] = {}
    rows = []
    for k in range(cfg.steps + 1):
        grad_now = true_gradient(problem, logits_fn, theta)
        directions = directions_at(theta)
        scales = scales or _scales(directions, grad_old, problem.length)
        rows.append(
            {
                "k": k,
                "J": float(objective(problem, logits_fn, theta)),
                "grad_drift": relative_error(grad_now, grad_old),
                **ratio_stats(problem, logits_fn, old, theta, cfg),
                "directions": {
                    label: {
                        "cos_now": cosine(d, grad_now),
                        "cos_old": cosine(d, grad_old),
                        "err_now": relative_error(scales[label] * d, grad_now),
                        "err_old": relative_error(scales[label] * d, grad_old),
                    }
                    for label, d in directions.items()
                },
            }
        )
        theta = theta + cfg.lr * directions[cfg.path]
    result = {
        "config": asdict(cfg),
        "n_completions": len(problem.completions),
        "n_params": n_params,
        "lengths": {str(n): int((problem.lengths == n).sum()) for n in range(1, cfg.length + 1)},
        "J_old": rows[0]["J"],
        "scales": scales,
        "rows": rows,
    }
    if out is not None:
        write_outputs(result, Path(out), {d.label: d.note for d in DIRECTIONS})
    return result


def main(argv: list[str] | None = None) -> int:
    defaults = BiasConfig()
    p = argparse.ArgumentParser(
        prog="tic-grpo analyze gradient-bias",
        description="Exact (enumerated) comparison of GRPO, no-IS and TIC-GRPO update "
        "directions with the true policy gradient over k inner steps.",
    )
    p.add_argument("--vocab", type=int, default=defaults.vocab, help="tokens, EOS included")
    p.add_argument("--length", type=int, default=defaults.length, help="max length T")
    p.add_argument("--no-eos", dest="eos", action="store_false", help="all lengths equal T")
    p.add_argument("--policy", choices=("tabular", "mlp"), default=defaults.policy)
    p.add_argument("--hidden", type=int, default=defaults.hidden, help="mlp width")
    p.add_argument("--init-scale", type=float, default=defaults.init_scale, help="std of θ_old")
    p.add_argument("--steps", type=int, default=defaults.steps, help="K inner updates")
    p.add_argument("--lr", type=float, default=defaults.lr, help="step on the --path direction")
    p.add_argument(
        "--path",
        choices=[d.label for d in DIRECTIONS],
        default=defaults.path,
        help="the expected direction the inner updates θ_k -> θ_k+1 follow",
    )
    p.add_argument("--epsilon-low", type=float, default=defaults.epsilon_low)
    p.add_argument("--epsilon-high", type=float, default=defaults.epsilon_high)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--staleness",
        type=int,
        default=None,
        metavar="D",
        help="instead: each estimator at the current θ with the rollout sampled d = 0..D "
        "updates earlier, against ∇J(θ) (staleness_bias.py)",
    )
    p.add_argument(
        "--correction-cap",
        type=float,
        default=2.0,
        help="C of the proximal/μ weights (--staleness)",
    )
    args = vars(p.parse_args(argv))
    out, staleness, cap = args.pop("out"), args.pop("staleness"), args.pop("correction_cap")
    if staleness is not None:
        return _staleness_main(p, args, staleness, cap, out)
    cfg = BiasConfig(**args)
    try:
        check(cfg)
    except ValueError as error:
        p.error(str(error))  # exits 2 with the usage line, like any other bad argument
    result = run(cfg, out=out)
    print_table(result)
    print(f"wrote {out}/gradient_bias.{{csv,json,png}}")
    return 0


def _staleness_main(
    parser: argparse.ArgumentParser, args: dict, staleness: int, cap: float, out: Path
) -> int:
    from tic_grpo_cli.analysis import staleness_bias

    shared = {k: v for k, v in args.items() if k not in ("steps", "path")}
    try:
        cfg = staleness_bias.StalenessConfig(**shared, staleness=staleness, correction_cap=cap)
        result = staleness_bias.run(cfg, out=out)
    except ValueError as error:
        parser.error(str(error))
    print(staleness_bias.table(result))
    print(f"wrote {out}/staleness_bias.{{csv,json,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
