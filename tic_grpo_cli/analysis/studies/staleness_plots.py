"""The staleness study's plots (docs/RESULTS.md, "The staleness study"): final accuracy and
accuracy over the run against the staleness d per arm, beside the figures AReaL published
for naive and decoupled PPO; and test accuracy against step per d. `staleness.report` calls
them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tic_grpo_cli.analysis.studies.common import area_under_curve, final
from tic_grpo_cli.sweep.report import _band
from tic_grpo_cli.sweep.stats import describe

# AReaL (arXiv 2505.24298, Table 3: R1-Distill-Qwen-1.5B, AIME24), the figures quoted in
# issue 26: PPO 42.0 synchronous and 23.3 at staleness 4; the decoupled objective 42.2 at
# staleness 4. At staleness 0 proximal = behaviour, so the two objectives are one (42.0;
# the two markers coincide there).
AREAL = {"naive PPO (AReaL)": {0: 42.0, 4: 23.3}, "decoupled PPO (AReaL)": {0: 42.0, 4: 42.2}}


def _figure(cols: int, width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols, squeeze=False)[0]


def plot_against_staleness(jobs: list[dict[str, Any]], path: Path) -> None:
    """Three panels against d (evenly spaced: 0, 2, 4, 8, 16): final test accuracy and the
    mean accuracy over the run, mean and 95% interval over seeds per arm (shifted sideways
    so the arms do not hide each other); AReaL's published points for comparison. The
    4-step chains only: the 8-step extension has one d (curves and tables show it)."""
    jobs = [j for j in jobs if j["length"] == 4]
    ds = sorted({j["d"] for j in jobs})
    arms = sorted({j["arm"] for j in jobs})
    fig, axes = _figure(3, 15.0, 4.6)
    for ax, measure, ylabel in ((axes[0], final, "final greedy test accuracy"),
                                (axes[1], area_under_curve, "mean test accuracy over the run")):  # fmt: skip
        for i, arm in enumerate(arms):
            xs, ys, errs = [], [], []
            for x, d in enumerate(ds):
                stats = describe(
                    [measure(j["record"]) for j in jobs if (j["arm"], j["d"]) == (arm, d)]
                )
                if stats["mean"] is None:
                    continue
                xs.append(x + 0.06 * (i - (len(arms) - 1) / 2))
                ys.append(stats["mean"])
                errs.append(0.0 if stats["std"] is None else stats["ci95_high"] - stats["mean"])
            ax.errorbar(xs, ys, yerr=errs, color=f"C{i}", marker="o", capsize=3, label=arm)
        ax.set_xticks(range(len(ds)), [str(d) for d in ds])
        ax.set(xlabel="staleness d (policy versions between sampling and training)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    for i, (name, points) in enumerate(AREAL.items()):
        axes[2].plot(list(points), list(points.values()), marker="s", color=f"C{i + 6}",
                     label=name)  # fmt: skip
    axes[2].set(xlabel="maximum staleness", ylabel="AIME24 accuracy (%)", ylim=(0, 50),
                title="published: AReaL, R1-Distill-Qwen-1.5B")  # fmt: skip
    axes[2].set_xticks([0, 4])
    axes[2].legend(fontsize="small")
    axes[2].grid(alpha=0.3)
    axes[0].set_title("4-step chains (T=32), K=4, 128 steps: where the run ends")
    axes[1].set_title("the same runs: how fast they got there")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6) or 1)
    fig.savefig(path, dpi=100)


def plot_curves(jobs: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy against step, one panel per (chain length, d), mean and min-max band
    per arm (each arm keeps its colour across panels)."""
    panels = sorted({(j["length"], j["d"]) for j in jobs})
    arms = sorted({j["arm"] for j in jobs})
    fig, axes = _figure(len(panels), max(3.6 * len(panels), 8.0), 4.2)
    for ax, (length, d) in zip(axes, panels, strict=True):
        for i, arm in enumerate(arms):
            series = [[(s, a) for s, a, _ in j["record"]["eval"]] for j in jobs
                      if (j["arm"], j["d"], j["length"]) == (arm, d, length)]  # fmt: skip
            steps, mean, low, high = _band(series)
            if steps:
                ax.plot(steps, mean, color=f"C{i}", marker=".", label=f"{arm} (n={len(series)})")
                ax.fill_between(steps, low, high, color=f"C{i}", alpha=0.12, linewidth=0)
        ax.set_title(f"{length}-step chains, d = {d}", fontsize="medium")
        ax.set(xlabel="optimizer step", ylabel="greedy test accuracy")
        ax.grid(alpha=0.3)
    # Every arm once, from the panel with the most of them.
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda h: len(h[1]))
    fig.legend(handles, [lab.split(" (n=")[0] for lab in labels], loc="outside lower center",
               ncols=min(len(labels), 6) or 1)  # fmt: skip
    fig.savefig(path, dpi=100)
