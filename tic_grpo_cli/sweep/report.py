"""The sweep summary: one row per configuration, written as summary.csv / summary.md,
printed as a rich table, and drawn as curves.png (mean over seeds with a min-max band)."""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tic_grpo_cli.runs.files import atomic_write
from tic_grpo_cli.sweep.jobs import Job, finite_number, steps_to_threshold
from tic_grpo_cli.sweep.stats import describe

# (column stem, summary.json key, header, number format). steps_to_threshold comes from
# metrics.jsonl because it depends on the threshold chosen at aggregation time.
METRICS = (
    ("final_eval_accuracy", "final/eval_accuracy", "final eval acc", "{:.3f}"),
    ("best_eval_accuracy", "best/eval_accuracy", "best eval acc", "{:.3f}"),
    ("final_reward", "final/reward", "final reward", "{:.3f}"),
    ("steps_to_threshold", None, "steps to {threshold:g}", "{:.1f}"),
    ("wall_time_s", "wall_time_s", "wall time (s)", "{:.1f}"),
    ("tokens_per_s", "throughput/tokens_per_s", "tokens/s", "{:.0f}"),
)
STATUSES = ("finished", "failed", "incomplete")


def config_row(label: str, jobs: list[Job], threshold: float) -> dict[str, Any]:
    """One summary row: job counts by status and every METRICS column described over seeds."""
    done = [j for j in jobs if j.status == "finished"]
    row: dict[str, Any] = {
        "config": label,
        "seeds": " ".join(j.seed for j in done),
        "finished": len(done),
        "failed": sum(j.status == "failed" for j in jobs),
        "incomplete": sum(j.status == "incomplete" for j in jobs),
    }
    for stem, key, _, _ in METRICS:
        if key is None:
            reached = [steps_to_threshold(j.rows, threshold) for j in done]
            values = [float(s) for s in reached if s is not None]
            # Seeds that never reach the threshold have no step to average; count them instead.
            row["reached_threshold"] = f"{len(values)}/{len(done)}"
        else:
            values = [v for j in done if (v := finite_number(j.summary.get(key))) is not None]
        row.update({f"{stem}_{k}": v for k, v in describe(values).items()})
    row["errors"] = "; ".join(
        f"seed={j.seed}: {j.error or 'incomplete'}" for j in jobs if j.status != "finished"
    )
    return row


@dataclass
class Summary:
    dir: Path
    threshold: float
    jobs: list[Job]
    groups: dict[str, list[Job]]  # configuration label -> its jobs
    common: list[str]  # overrides every job shares
    rows: list[dict[str, Any]]  # one per configuration

    @property
    def problems(self) -> list[Job]:
        return [j for jobs in self.groups.values() for j in jobs if j.status != "finished"]

    def headers(self) -> list[str]:
        metrics = (h.format(threshold=self.threshold) for _, _, h, _ in METRICS)
        return ["configuration", "seeds", *metrics]

    def preamble(self) -> list[str]:
        counts = (f"{sum(j.status == s for j in self.jobs)} {s}" for s in STATUSES)
        lines = [
            f"{len(self.jobs)} jobs: {', '.join(counts)}.",
            "Cells: mean ± sample std over seeds [two-sided 95% Student-t interval, "
            "mean ± t(0.975, n-1)·std/√n]; std and interval need ≥ 2 finished seeds.",
            f"Steps to {self.threshold:g}: first eval step with accuracy ≥ {self.threshold:g}, "
            "averaged over the seeds that reached it.",
        ]
        if self.common:
            lines.append("Common overrides: " + " ".join(self.common))
        return lines


def _cell(row: dict[str, Any], stem: str, fmt: str, sep: str) -> str:
    mean, std = row[f"{stem}_mean"], row[f"{stem}_std"]
    if mean is None:
        text = "-"
    elif std is None:
        text = fmt.format(mean)
    else:
        low, high = row[f"{stem}_ci95_low"], row[f"{stem}_ci95_high"]
        text = f"{fmt.format(mean)} ± {fmt.format(std)}{sep}[{fmt.format(low)}, {fmt.format(high)}]"
    if stem == "steps_to_threshold" and row["finished"]:
        text += f"{sep}({row['reached_threshold']} seeds reached it)"
    return text


def _table_cells(row: dict[str, Any], sep: str = " ") -> list[str]:
    seeds = f"{row['finished']} ({row['seeds'].replace(' ', ',')})" if row["finished"] else "0"
    return [row["config"], seeds, *(_cell(row, stem, fmt, sep) for stem, _, _, fmt in METRICS)]


def markdown(s: Summary) -> str:
    """summary.md: the preamble, the table, the failed and incomplete jobs, the curves."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    out = [f"# Sweep summary: {s.dir.name}", "", *s.preamble(), ""]
    out += [line(s.headers()), "|" + "---|" * len(s.headers())]
    out += [line(_table_cells(r)) for r in s.rows]
    if s.problems:
        out += ["", "## Failed and incomplete jobs", "", line(["job", "status", "error"])]
        out += ["|---|---|---|"]
        out += [line([str(j.dir.relative_to(s.dir)), j.status, j.error]) for j in s.problems]
    out += ["", "![curves](curves.png)", ""]
    return "\n".join(out)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """summary.csv: every column of the rows (means, stds, interval ends, counts)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def print_table(s: Summary) -> None:
    """The summary as a rich table on the console, then the preamble and any problem jobs."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if not console.is_terminal:  # a log file or CI: no terminal width to respect
        console.width = max(console.width, 160)
    # Text() everywhere: "[0.1, 0.9]" and error messages must not be read as rich markup.
    table = Table(title=Text(f"sweep {s.dir}"))
    for header in s.headers():
        table.add_column(header, overflow="fold")
    for row in s.rows:
        table.add_row(*(Text(c) for c in _table_cells(row, sep="\n")))
    console.print(table)
    console.print(Text("\n".join(s.preamble())))
    for job in s.problems:
        console.print(Text(f"{job.status}: {job.dir.relative_to(s.dir)}: {job.error}", style="red"))


# ---------------------------------------------------------------- curves


def _band(
    series: list[list[tuple[int, float]]],
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean, min and max over seeds at every step any seed logged."""
    by_step: dict[int, list[float]] = {}
    for points in series:
        for step, value in points:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return (
        steps,
        [statistics.fmean(by_step[s]) for s in steps],
        [min(by_step[s]) for s in steps],
        [max(by_step[s]) for s in steps],
    )


def plot_curves(s: Summary, path: Path) -> None:
    """curves.png: eval accuracy and train reward per configuration against optimizer step."""
    # The object API draws without pyplot, so no GUI backend is chosen or switched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_rew = fig.subplots(1, 2)
    panels = ((ax_acc, "eval/accuracy", "eval accuracy"), (ax_rew, "reward/mean", "train reward"))
    for i, (label, jobs) in enumerate(s.groups.items()):
        done = [j for j in jobs if j.status == "finished"]
        for ax, key, _ in panels:
            series = [
                [
                    (int(r["step"]), v)
                    for r in j.rows
                    if (v := finite_number(r.get(key))) is not None
                ]
                for j in done
            ]
            steps, mean, low, high = _band(series)
            if not steps:
                continue
            marker = "." if len(steps) < 30 else None
            ax.plot(steps, mean, color=f"C{i}", marker=marker, label=f"{label} (n={len(done)})")
            if len(done) > 1:
                ax.fill_between(steps, low, high, color=f"C{i}", alpha=0.2, linewidth=0)
    ax_acc.axhline(s.threshold, color="0.5", ls="--", lw=1, label=f"threshold {s.threshold:g}")
    for ax, key, ylabel in panels:
        ax.set(xlabel="optimizer step", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{ylabel.capitalize()} ({key}): mean over seeds, band min-max")
        ax.grid(alpha=0.3)
    # One legend for both panels (same colours), below them so it never hides a curve.
    handles, labels = ax_acc.get_legend_handles_labels()
    if len(handles) <= 1:  # no eval rows at all: take the reward panel's lines
        handles, labels = ax_rew.get_legend_handles_labels()
    ncols = min(len(labels), 3) or 1
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
