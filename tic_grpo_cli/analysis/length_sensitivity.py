"""How the bias of each update direction depends on the completion length T, exactly.

The paper's theory says GRPO's token-level correction misses the shift of the prefix
distribution, an error that accumulates over the T tokens of a trajectory, while TIC-GRPO's
trajectory ratio corrects it whatever T is (until its cap binds). The gradient-bias
analysis (``gradient_bias.py``) measures this at one T; this one repeats it over a range
of T and seeds and reports, after k inner GRPO steps:

- ``drift``: ‖∇J(θ_k) − ∇J(θ_old)‖ / ‖∇J(θ_old)‖, how far the true gradient moved;
- the relative error to ∇J(θ_k) of unclipped GRPO (1/T), of no-IS (∇J(θ_old)) and of
  unclipped TIC;
- ``uncorrected``: GRPO's error / no-IS's error, the share of the drift the token ratios
  leave uncorrected (0: GRPO is as good as TIC; 1: no better than no importance sampling);
- the first inner step at which TIC's cap (ρ > 1 + ε_high) and GRPO's token clip bind.

    tic-grpo analyze length-sensitivity                      # T = 2..8, seeds 0..2, k = 8
    tic-grpo analyze length-sensitivity --lengths 2,4,6 --seeds 0 --no-eos
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from tic_grpo_cli.analysis.gradient_bias import MAX_COMPLETIONS, BiasConfig, run

DEFAULT_OUT = Path("outputs/analysis/length_sensitivity")
MEANS = ("kl_old_new", "rho_max", "drift", "err_grpo", "err_no_is", "err_tic", "uncorrected")
FIRSTS = ("first_k_tic_cap", "first_k_grpo_clip")  # inner step a clip first bound, or None
COLUMNS = ("length", "seed", *MEANS, *FIRSTS)


def measure(length: int, seed: int, steps: int, eos: bool, vocab: int) -> dict:
    """One exact run; the row at the last inner step plus when each clip first bound."""
    result = run(BiasConfig(vocab=vocab, length=length, eos=eos, steps=steps, seed=seed))
    rows = result["rows"]
    last = rows[-1]
    directions = last["directions"]

    def first(key: str) -> int | None:
        return next((r["k"] for r in rows if r[key] > 0), None)

    return {
        "length": length,
        "seed": seed,
        "kl_old_new": last["kl_old_new"],
        "rho_max": last["rho_max"],
        "drift": last["grad_drift"],
        "err_grpo": directions["grpo_T_unclipped"]["err_now"],
        "err_no_is": directions["grpo_no_is_T"]["err_now"],
        "err_tic": directions["tic"]["err_now"],
        "uncorrected": directions["grpo_T_unclipped"]["err_now"]
        / directions["grpo_no_is_T"]["err_now"],
        "first_k_tic_cap": first("tic_clipped_mass"),
        "first_k_grpo_clip": first("token_outside_clip"),
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds per length (the first-k columns: the smallest k, '-' if never)."""
    out = []
    for length in sorted({r["length"] for r in rows}):
        mine = [r for r in rows if r["length"] == length]
        line: dict = {"length": length, "seeds": len(mine)}
        for key in MEANS:
            line[key] = statistics.fmean(r[key] for r in mine)
        for key in FIRSTS:
            hits = [r[key] for r in mine if r[key] is not None]
            line[key] = min(hits) if hits else None
        out.append(line)
    return out


def markdown(summary: list[dict], steps: int) -> str:
    head = (
        f"| T | seeds | KL(old‖θ_{steps}) | max ρ | drift | GRPO err | no-IS err | TIC err "
        "| uncorrected | TIC cap binds at k | GRPO clip binds at k |"
    )
    lines = [head, "|" + "---|" * 11]
    for s in summary:
        first = ["-" if s[k] is None else str(s[k]) for k in FIRSTS]
        lines.append(
            f"| {s['length']} | {s['seeds']} | {s['kl_old_new']:.4f} | {s['rho_max']:.3f} | "
            f"{s['drift']:.3f} | {s['err_grpo']:.3f} | {s['err_no_is']:.3f} | "
            f"{s['err_tic']:.1e} | {s['uncorrected']:.2f} | {first[0]} | {first[1]} |"
        )
    return "\n".join(lines) + "\n"


# Four series on one axis: no-IS's error and the drift nearly coincide (no-IS is
# ∇J(θ_old) exactly), so each gets its own marker, line style and a small sideways offset.
SERIES = (  # key, label, marker, line style, x offset
    ("drift", "drift", "x", ":", -0.12),
    ("err_no_is", "no-IS", "o", "-", -0.04),
    ("err_grpo", "GRPO (1/T)", "s", "-", 0.04),
    ("err_tic", "TIC", "^", "-", 0.12),
)


def setting_text(steps: int, eos: bool, vocab: int, seeds: list[int]) -> str:
    """What a figure of this analysis must say it shows: the exact setting it ran."""
    lengths = "ragged lengths (EOS may end early)" if eos else "every completion exactly T tokens"
    return (
        f"exact enumeration, vocab {vocab}, {lengths}, k = {steps} inner GRPO steps, "
        f"seeds {', '.join(map(str, seeds))} (mean; bars: min–max)"
    )


def plot(
    rows: list[dict], summary: list[dict], path: Path, steps: int, setting: str, command: str
) -> None:
    """Write length_sensitivity.png (`figure`)."""
    import matplotlib.pyplot as plt

    fig = figure(rows, summary, steps, setting, command)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(rows: list[dict], summary: list[dict], steps: int, setting: str, command: str):
    """Left: each direction's error to ∇J(θ_k) and the drift against T; right: the share of
    the drift GRPO leaves uncorrected, every seed drawn. Titled with `setting`, the command
    that made it under the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [s["length"] for s in summary]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for key, label, marker, style, dx in SERIES:
        mean, low, high = _spread(rows, summary, key)
        if key == "err_tic":  # ~1e-16: on a linear axis at 0, its size said in the legend
            label = f"TIC (max {max(r[key] for r in rows):.0e})"
        left.errorbar(
            [t + dx for t in lengths], mean, yerr=[low, high], marker=marker, ls=style,
            capsize=2, ms=5, label=label, mfc="none" if marker in "os^" else None,
        )  # fmt: skip
    left.set_ylim(bottom=-0.02)
    left.set_xlabel("T")
    left.set_xticks(lengths)
    left.set_ylabel(f"relative error to ∇J(θ_{steps})")
    left.legend(fontsize=8)
    seeds = sorted({r["seed"] for r in rows})
    for i, seed in enumerate(seeds):
        mine = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["length"])
        offset = (i - (len(seeds) - 1) / 2) * 0.06
        right.plot(
            [r["length"] + offset for r in mine], [r["uncorrected"] for r in mine], ls="none",
            marker=".", color="grey", alpha=0.7, label="each seed" if i == 0 else None,
        )  # fmt: skip
    right.plot(lengths, [s["uncorrected"] for s in summary], marker="o", color="C1", label="mean")
    right.axhline(1.0, color="grey", lw=0.8, ls="--")
    top = max(1.2, *(r["uncorrected"] + 0.1 for r in rows))
    right.set_ylim(0, top)
    right.set_xlabel("T")
    right.set_xticks(lengths)
    right.set_ylabel("GRPO error / no-IS error")
    right.set_title("share of the drift GRPO leaves uncorrected", fontsize=10)
    right.legend(fontsize=8)
    fig.suptitle(setting, fontsize=9)
    fig.text(0.5, 0.01, command, ha="center", fontsize=8, family="monospace", color="dimgrey")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def _spread(rows: list[dict], summary: list[dict], key: str) -> tuple[list, list, list]:
    """(mean, mean - min, max - mean) over seeds per length."""
    mean, low, high = [], [], []
    for s in summary:
        values = [r[key] for r in rows if r["length"] == s["length"]]
        m = s[key]
        mean.append(m)
        low.append(max(0.0, m - min(values)))
        high.append(max(0.0, max(values) - m))
    return mean, low, high


def write(
    rows: list[dict], summary: list[dict], out: Path, steps: int, setting: str = "",
    command: str = "",
) -> None:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with (out / "length_sensitivity.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "length_sensitivity.json").write_text(
        json.dumps({"rows": rows, "summary": summary}, indent=1)
    )
    (out / "length_sensitivity.md").write_text(markdown(summary, steps))
    plot(rows, summary, out / "length_sensitivity.png", steps, setting, command)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tic-grpo analyze length-sensitivity",
        description="Exact bias of GRPO, no-IS and TIC-GRPO update directions as the "
        "completion length T grows.",
    )
    p.add_argument("--lengths", type=_ints, default=[2, 3, 4, 5, 6, 7, 8], help="e.g. 2,4,6")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=8, help="k inner GRPO steps")
    p.add_argument("--vocab", type=int, default=3, help="tokens, EOS included")
    p.add_argument("--no-eos", dest="eos", action="store_false", help="all lengths equal T")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    too_long = [t for t in args.lengths if t < 2 or args.vocab**t > MAX_COMPLETIONS]
    if too_long or args.steps < 1:
        p.error(
            f"--lengths {too_long}: T must be >= 2 and vocab**T <= {MAX_COMPLETIONS}"
            if too_long
            else "--steps must be >= 1"
        )
    rows = [
        measure(length, seed, args.steps, args.eos, args.vocab)
        for length in args.lengths
        for seed in args.seeds
    ]
    summary = summarise(rows)
    setting = setting_text(args.steps, args.eos, args.vocab, args.seeds)
    given = sys.argv[1:] if argv is None else argv
    shown = [a for i, a in enumerate(given) if a != "--out" and given[i - 1 : i] != ["--out"]]
    command = " ".join(["tic-grpo analyze length-sensitivity", *shown])
    write(rows, summary, args.out, args.steps, setting, command)
    print(markdown(summary, args.steps))
    print(f"wrote {args.out}/length_sensitivity.{{csv,json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
