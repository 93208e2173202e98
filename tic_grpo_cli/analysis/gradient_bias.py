"""Exact gradient-bias check: which gradient does each algorithm's update estimate?

PAPER.md ("Theory") claims that, inside one inner loop, the expected GRPO update is
``∇J(θ_old)`` plus a drift that grows with the number of inner steps, while the expected
(unclipped) TIC-GRPO update is ``∇J(θ)`` at the current parameters, exactly. Sampling
noise would swamp that claim, so we take a policy small enough to list every completion
and compute every expectation as an exact, float64 sum over them:

- ``J(θ) = Σ_s P_θ(s) R(s)`` and ``∇J(θ)`` by autograd through that sum;
- the expected update of an algorithm at ``θ`` is ``E_{s~π_old}[-∇_θ loss_s(θ)]``, obtained
  from one batched call of the project's ``compute_policy_loss`` over all completions,
  each completion's advantage multiplied by ``B · P_old(s)`` (every loss term is positively
  homogeneous in the advantage, so this weights the batch mean into the exact expectation).

Advantages are ``A(s) = R(s) - E_old[R]``: the group-normalised advantage has no closed-form
expectation, and a constant baseline leaves both ``∇J`` and the TIC identity unchanged,
because ``E_old[ρ ∇log P_θ] = Σ_s ∇P_θ(s) = ∇1 = 0``.

Run: ``python -m tic_grpo_cli.analysis.gradient_bias --steps 16 --out DIR``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tic_grpo_cli.algorithms import compute_policy_loss

EOS = 0  # token id that ends a completion early when the vocabulary has one
PATTERN = (1, 2)  # the reward asks for these two tokens next to each other
DEFAULT_OUT = Path("outputs/analysis/gradient_bias")
UNCLIPPED = 1e9  # an epsilon no ratio reaches: turns every clip off
DTYPE = torch.float64


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


# --- the enumerated problem -------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Every completion of a tiny autoregressive policy, as padded tensors."""

    completions: list[tuple[int, ...]]
    tokens: torch.Tensor  # [S, T] long, padded with 0
    mask: torch.Tensor  # [S, T] bool
    prefix_index: torch.Tensor  # [S, T] long: the logit row (prefix) each token came from
    prefix_features: torch.Tensor  # [P, F] float64, the mlp's input per prefix
    rewards: torch.Tensor  # [S] float64
    length: int  # T
    vocab: int

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def enumerate_completions(
    vocab: int, length: int, eos: bool
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """All completions (ending at EOS or at T tokens) and all prefixes that emit a token."""
    completions: list[tuple[int, ...]] = []
    prefixes: list[tuple[int, ...]] = []

    def grow(prefix: tuple[int, ...]) -> None:
        prefixes.append(prefix)
        for token in range(vocab):
            seq = (*prefix, token)
            if (eos and token == EOS) or len(seq) == length:
                completions.append(seq)
            else:
                grow(seq)

    grow(())
    return completions, prefixes


def reward(completion: tuple[int, ...]) -> float:
    """1 if the completion contains PATTERN, else 0: a verifiable reward on the whole text."""
    n = len(PATTERN)
    hits = (completion[i : i + n] == PATTERN for i in range(len(completion) - n + 1))
    return float(any(hits))


def _features(prefix: tuple[int, ...], vocab: int, length: int) -> list[float]:
    # position, previous token (vocab = BOS) and token counts: enough for the mlp to tell
    # prefixes apart while sharing weights between them, as a language model does
    position = [float(len(prefix) == i) for i in range(length)]
    previous = prefix[-1] if prefix else vocab
    prev = [float(previous == v) for v in range(vocab + 1)]
    counts = [prefix.count(v) / length for v in range(vocab)]
    return position + prev + counts


def build_problem(vocab: int, length: int, eos: bool) -> Problem:
    completions, prefixes = enumerate_completions(vocab, length, eos)
    row = {p: i for i, p in enumerate(prefixes)}
    tokens = torch.zeros(len(completions), length, dtype=torch.long)
    mask = torch.zeros(len(completions), length, dtype=torch.bool)
    prefix_index = torch.zeros(len(completions), length, dtype=torch.long)
    for i, seq in enumerate(completions):
        tokens[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = True
        prefix_index[i, : len(seq)] = torch.tensor([row[seq[:t]] for t in range(len(seq))])
    features = torch.tensor([_features(p, vocab, length) for p in prefixes], dtype=DTYPE)
    rewards = torch.tensor([reward(s) for s in completions], dtype=DTYPE)
    return Problem(completions, tokens, mask, prefix_index, features, rewards, length, vocab)


# --- the policy: flat θ -> log-probs of every completion's tokens -----------------------


def make_policy(
    problem: Problem, kind: str, hidden: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """(θ -> logits [P, V], number of parameters). θ is one flat float64 vector."""
    n_prefix, n_feat = problem.prefix_features.shape
    vocab = problem.vocab
    if kind == "tabular":
        return (lambda theta: theta.view(n_prefix, vocab)), n_prefix * vocab
    if kind != "mlp":
        raise ValueError(f"unknown policy {kind!r}: expected 'tabular' or 'mlp'")
    shapes = [(n_feat, hidden), (hidden,), (hidden, vocab), (vocab,)]
    sizes = [math.prod(s) for s in shapes]

    def logits(theta: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (p.view(s) for p, s in zip(theta.split(sizes), shapes, strict=True))
        return torch.tanh(problem.prefix_features @ w1 + b1) @ w2 + b2

    return logits, sum(sizes)


def token_logprobs(
    problem: Problem, logits_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor
) -> torch.Tensor:
    """log π_θ(s_t | s_<t) for every completion and position, 0 on padding: [S, T]."""
    logp = torch.log_softmax(logits_fn(theta), dim=-1)
    return logp[problem.prefix_index, problem.tokens].masked_fill(~problem.mask, 0.0)


def objective(problem: Problem, logits_fn: Callable, theta: torch.Tensor) -> torch.Tensor:
    """J(θ) = Σ_s P_θ(s) R(s), exact."""
    seq_logp = token_logprobs(problem, logits_fn, theta).sum(-1)
    return (seq_logp.exp() * problem.rewards).sum()


def true_gradient(problem: Problem, logits_fn: Callable, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(problem, logits_fn, theta), theta)
    return grad


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
        write_outputs(result, Path(out))
    return result


# --- outputs ----------------------------------------------------------------------------

METRICS = ("cos_now", "cos_old", "err_now", "err_old")
STATE = ("J", "grad_drift", "rho_max", "tic_clipped_mass", "token_outside_clip", "kl_old_new")


def write_outputs(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gradient_bias.json").write_text(json.dumps(result, indent=2))
    with open(out / "gradient_bias.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["k", "direction", *METRICS, *STATE])
        for row in result["rows"]:
            for label, m in row["directions"].items():
                writer.writerow(
                    [row["k"], label, *(m[x] for x in METRICS), *(row[x] for x in STATE)]
                )
    plot(result, out / "gradient_bias.png")


STYLE = {  # label -> (colour, line style): one hue per family, dashes for variants
    "grpo": ("tab:blue", "-"),
    "grpo_T": ("tab:blue", "--"),
    "grpo_T_unclipped": ("tab:cyan", ":"),
    "grpo_no_is": ("tab:orange", "-"),
    "grpo_no_is_T": ("tab:orange", "--"),
    "tic": ("tab:red", "-"),
    "tic_clipped": ("tab:purple", "--"),
}


DRIFT_LABEL = "‖∇J(θ_k) − ∇J(θ_old)‖ / ‖∇J(θ_old)‖ (how far the true gradient moved)"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cfg = result["rows"], result["config"]
    ks = [r["k"] for r in rows]
    floor = 1e-17  # exact agreement is ~1e-16; clamp 0 so a log axis can show it
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), sharex=True)
    panels = [  # the log panel shows which rows are exact, the linear ones how big the rest are
        (axes[0, 0], "err_now", "relative error to ∇J(θ_k), the current gradient (log)", True),
        (axes[0, 1], "err_now", "relative error to ∇J(θ_k), the current gradient", False),
        (axes[1, 0], "err_old", "relative error to ∇J(θ_old), the rollout gradient", False),
    ]
    for ax, metric, title, log in panels:
        for label in rows[0]["directions"]:
            colour, dash = STYLE.get(label, ("black", "-"))
            ys = [max(r["directions"][label][metric], floor) for r in rows]
            note = DIRECTION_BY_LABEL[label].note
            ax.plot(ks, ys, dash, color=colour, lw=2, marker=".", label=f"{label}: {note}")
        drift = [max(r["grad_drift"], floor) for r in rows]
        ax.plot(ks, drift, color="gray", lw=4, alpha=0.35, label=DRIFT_LABEL)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(floor / 3, 10)
        else:
            ax.set_ylim(-0.02, 1.0)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax = axes[1, 1]
    eps = cfg["epsilon_high"]
    ax.plot(ks, [r["rho_max"] for r in rows], color="black", lw=2, label="max_s ρ(s)")
    ax.axhline(1 + eps, color="black", ls=":", lw=1, label=f"1 + ε_high = {1 + eps:g}")
    ax.set_ylabel("ratio")
    share = ax.twinx()
    share.plot(
        ks,
        [r["tic_clipped_mass"] for r in rows],
        color="tab:purple",
        lw=2,
        ls="--",
        label="P_old-mass with ρ > 1+ε_high",
    )
    share.plot(
        ks,
        [r["token_outside_clip"] for r in rows],
        color="tab:blue",
        lw=2,
        ls="--",
        label="P_old-mean share of tokens outside the PPO clip range",
    )
    share.set_ylabel("share")
    share.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()[0] + share.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper left")
    ax.set_title("how far θ_k is from θ_old")
    ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("inner step k")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, handlelength=4)
    fig.suptitle(
        f"Expected update directions by exact enumeration: {result['n_completions']} completions, "
        f"|V|={cfg['vocab']} (EOS {'on' if cfg['eos'] else 'off'}), T={cfg['length']}, "
        f"{cfg['policy']} policy; inner steps follow {cfg['path']}, lr={cfg['lr']:g}"
    )
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(result: dict, ks: list[int] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = result["rows"]
    ks = ks or sorted({0, 1, 2, 4, 8, rows[-1]["k"]} & {r["k"] for r in rows})
    table = Table(title="expected update direction vs the true gradient (exact)")
    table.add_column("k", justify="right")
    table.add_column("direction")
    for target in ("∇J(θ_k)", "∇J(θ_old)"):
        table.add_column(f"cos {target}", justify="right")
        table.add_column(f"rel.err {target}", justify="right")
    for k in ks:
        for label, m in rows[k]["directions"].items():
            cells = (f"{m['cos_now']:.6f}", f"{m['err_now']:.2e}")
            cells += (f"{m['cos_old']:.6f}", f"{m['err_old']:.2e}")
            table.add_row(str(k), label, *cells)
        table.add_section()
    state = Table(title="how far θ_k is from θ_old")
    for col in ("k", *STATE):
        state.add_column(col, justify="right")
    for k in ks:
        state.add_row(str(k), *(f"{rows[k][x]:.4g}" for x in STATE))
    console = Console()
    console.print(table)
    console.print(state)


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
    args = vars(p.parse_args(argv))
    out = args.pop("out")
    cfg = BiasConfig(**args)
    try:
        check(cfg)
    except ValueError as error:
        p.error(str(error))  # exits 2 with the usage line, like any other bad argument
    result = run(cfg, out=out)
    print_table(result)
    print(f"wrote {out}/gradient_bias.{{csv,json,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
