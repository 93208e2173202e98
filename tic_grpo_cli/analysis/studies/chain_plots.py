"""The chain study's two plots: test accuracy against step per arm, and steps to the
threshold against K (docs/RESULTS.md, "The chain study"). `chain_study.report` calls them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tic_grpo_cli.analysis.studies.chain import final, reach
from tic_grpo_cli.sweep.report import _band
from tic_grpo_cli.sweep.stats import describe


def plot_curves(jobs: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy against step, one panel per (chain length, K), mean and min-max band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = sorted({(j["length"], j["k"]) for j in jobs})
    arms = sorted({j["arm"] for j in jobs})
    cols = max(len({k for _, k in panels}), 1)
    rows_n = max(len({t for t, _ in panels}), 1)
    fig = Figure(figsize=(max(4.2 * cols, 8.0), 3.4 * rows_n + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows_n, cols, squeeze=False)
    lengths, ks = sorted({t for t, _ in panels}), sorted({k for _, k in panels})
    for t, k in panels:
        ax = axes[lengths.index(t)][ks.index(k)]
        for i, arm in enumerate(arms):
            series = [
                [(s, a) for s, a, _ in j["record"]["eval"]]
                for j in jobs
                if j["arm"] == arm and j["k"] == k and j["length"] == t
            ]
            steps, mean, low, high = _band(series)
            if steps:
                ax.plot(steps, mean, color=f"C{i}", label=f"{arm} (n={len(series)})")
                ax.fill_between(steps, low, high, color=f"C{i}", alpha=0.15, linewidth=0)
        ax.set_title(f"{t} steps (T={8 * t}), K={k}", fontsize="medium")
        ax.set(xlabel="optimizer step", ylabel="greedy test accuracy")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3) or 1)
    fig.savefig(path, dpi=100)


def plot_steps(
    rows: list[dict[str, Any]], jobs: list[dict[str, Any]], thresholds: dict[int, float], path: Path
) -> None:
    """Against K, one column per chain length: steps to the threshold (top; mean and 95%
    interval over the seeds that reached it, their count written beside a point that not
    all seeds reached) and final test accuracy (bottom; mean of the last two evaluations,
    mean and 95% interval over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lengths = sorted({r["chain_length"] for r in rows})
    fig = Figure(figsize=(max(5 * len(lengths), 8.0), 7.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, max(len(lengths), 1), squeeze=False)
    arms = sorted({r["arm"] for r in rows})
    ks = sorted({r["K"] for r in rows})
    for col, t in enumerate(lengths):
        threshold = thresholds.get(t, 0.5)
        for i, arm in enumerate(arms):
            cell = {
                k: [j for j in jobs if (j["arm"], j["k"], j["length"]) == (arm, k, t)] for k in ks
            }
            steps = {
                k: [float(r[0]) for j in group if (r := reach(j["record"], threshold))]
                for k, group in cell.items()
            }
            finals = {k: [final(j["record"]) for j in group] for k, group in cell.items()}
            for ax, values in ((axes[0][col], steps), (axes[1][col], finals)):
                _errorbar(ax, i, len(arms), arm, values, {k: len(g) for k, g in cell.items()})
        for row, ylabel in enumerate(
            (f"steps to test accuracy {threshold:g}", "final test accuracy")
        ):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_xlim(min(ks) / 1.6, max(ks) * 1.6)
            ax.set(xlabel="K (minibatches per rollout)", ylabel=ylabel)
            ax.grid(alpha=0.3)
        axes[0][col].set_ylim(bottom=0)
        axes[0][col].set_title(f"{t} steps per problem (T={8 * t})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5) or 1)
    fig.savefig(path, dpi=100)


def _errorbar(ax: Any, i: int, n_arms: int, arm: str, values: dict, seeds: dict) -> None:
    """Mean and 95% interval per K of one arm, shifted sideways so the arms do not overlap;
    "n/m" beside a point that only n of the cell's m seeds contribute to."""
    xs, ys, errs = [], [], []
    for k, vals in values.items():
        d = describe(vals)
        if d["mean"] is None:
            continue
        x = k * (1 + 0.04 * (i - n_arms / 2))
        xs.append(x)
        ys.append(d["mean"])
        errs.append(0.0 if d["std"] is None else d["ci95_high"] - d["mean"])
        if len(vals) < seeds[k]:
            ax.annotate(f"{len(vals)}/{seeds[k]}", (x, d["mean"]), fontsize="x-small",
                        color=f"C{i}", xytext=(3, 3), textcoords="offset points")  # fmt: skip
    if xs:
        ax.errorbar(xs, ys, yerr=errs, color=f"C{i}", marker="o", capsize=3, label=arm)
