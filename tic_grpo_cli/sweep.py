"""`tic-grpo sweep`: summarise a Hydra multirun of training jobs.

Each job dir holds `.hydra/overrides.yaml` and, when it ended, `summary.json` (finished) or
`error.json` (failed); a dir with neither was killed or is still running ("incomplete").
Jobs are grouped into configurations by their overrides minus the seed; every metric is
reported over seeds as mean, sample std and a two-sided 95% Student-t interval
mean ± t(0.975, n-1) · std / sqrt(n).

This module is imported at every run (the Hydra callback below is instantiated even for a
single `tic-grpo train`), so matplotlib and rich are imported only where they are used.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tic_grpo_cli.errors import UserError

log = logging.getLogger("tic_grpo")

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
# Overrides that do not change what is trained, so jobs differing only in them are seeds
# of one configuration (the seed itself, bookkeeping, logging, thread counts).
NOT_CONFIG_KEYS = ("seed", "resume", "aggregate", "sweep.", "wandb.", "hardware.num_threads")
OUTPUTS = ("summary.csv", "summary.md", "curves.png")
STATUSES = ("finished", "failed", "incomplete")


# ---------------------------------------------------------------- job markers


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same dir, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _status(run_dir: Path) -> str:
    summary, error = run_dir / "summary.json", run_dir / "error.json"
    # A job re-run after a failure (or failing after an earlier success) leaves both files;
    # the newer one tells how its last attempt ended.
    if summary.exists() and (
        not error.exists() or summary.stat().st_mtime_ns >= error.stat().st_mtime_ns
    ):
        return "finished" if _read_json(summary) is not None else "incomplete"
    return "failed" if error.exists() else "incomplete"


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The job's summary.json if its last attempt finished, else None (run it)."""
    if _status(Path(run_dir)) != "finished":
        return None
    return _read_json(Path(run_dir) / "summary.json")


def record_failure(run_dir: Path, err: BaseException) -> None:
    """Write error.json for a failed job so the summary can list it with its error."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "error": str(err),
        "type": type(err).__name__,
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    }
    _write_text(run_dir / "error.json", json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------- statistics


def _t_two_sided_prob(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df (Abramowitz & Stegun 26.7.3/26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        term, total = math.cos(theta), 0.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + s * total)
    term, total = 1.0, 0.0
    for k in range(1, df // 2 + 1):
        total += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return s * total


def t_quantile_975(df: int) -> float:
    """t(0.975, df), the multiplier of a two-sided 95% interval; no scipy needed."""
    lo, hi = 0.0, math.pi / 2  # bisect on theta = atan(t / sqrt(df)): bounded and monotone
    for _ in range(100):
        mid = (lo + hi) / 2
        if _t_two_sided_prob(math.sqrt(df) * math.tan(mid), df) < 0.95:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def describe(values: list[float]) -> dict[str, float | None]:
    """Mean, sample std and 95% t interval; std and interval are None for n < 2."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95_low": None, "ci95_high": None}
    mean = statistics.fmean(values)
    if n == 1:
        return {"mean": mean, "std": None, "ci95_low": None, "ci95_high": None}
    std = statistics.stdev(values)
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


# ---------------------------------------------------------------- reading a sweep dir


@dataclass
class Job:
    dir: Path
    overrides: dict[str, str]
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seed(self) -> str:
        return self.overrides.get("seed", "0")


def _parse_overrides(lines: list[str]) -> dict[str, str]:
    parsed = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def _number(value: Any) -> float | None:
    """A finite float, or None: the trainer writes NaN for a metric it could not measure."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a killed job may leave half a line
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job dir below sweep_dir (any depth: Hydra's subdir may contain slashes)."""
    jobs = []
    for overrides_file in sorted(sweep_dir.rglob(".hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        # A .hydra right in the sweep dir belongs to a single run written there, not a job.
        if job_dir == sweep_dir:
            continue
        lines = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) or []
        job = Job(job_dir, _parse_overrides(lines), _status(job_dir))
        if job.status == "finished":
            job.summary = _read_json(job_dir / "summary.json") or {}
            job.rows = _read_metrics(job_dir / "metrics.jsonl")
        elif job.status == "failed":
            err = _read_json(job_dir / "error.json") or {}
            job.error = f"{err.get('type', 'Error')}: {err.get('error', '')}".strip()
        jobs.append(job)
    return jobs


def steps_to_threshold(rows: list[dict[str, Any]], threshold: float) -> int | None:
    """First step whose eval accuracy reaches the threshold, None if none does."""
    for row in rows:
        acc = _number(row.get("eval/accuracy"))
        if acc is not None and acc >= threshold:
            return int(row["step"])
    return None


def _is_config_key(key: str) -> bool:
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_CONFIG_KEYS)


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _group(jobs: list[Job]) -> tuple[dict[str, list[Job]], list[str]]:
    """Configurations keyed by label (the swept keys except seed) and the common overrides."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides if _is_config_key(k)))
    swept = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    common = [f"{k}={jobs[0].overrides[k]}" for k in keys if k not in swept]
    # With one configuration there is nothing to tell apart: name it by its overrides.
    label_keys = swept or keys
    groups: dict[str, list[Job]] = {}
    for job in sorted(
        jobs,
        key=lambda j: [_sort_key(j.overrides.get(k, "")) for k in label_keys] + [_sort_key(j.seed)],
    ):
        label = ",".join(f"{k}={job.overrides[k]}" for k in label_keys if k in job.overrides)
        groups.setdefault(label or "defaults", []).append(job)
    return groups, common if swept else []


# ---------------------------------------------------------------- summary


def _config_row(label: str, jobs: list[Job], threshold: float) -> dict[str, Any]:
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
            values = [v for j in done if (v := _number(j.summary.get(key))) is not None]
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


def _markdown(s: Summary) -> str:
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


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _print_table(s: Summary) -> None:
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
                [(int(r["step"]), v) for r in j.rows if (v := _number(r.get(key))) is not None]
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
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def summarize(sweep_dir: Path, threshold: float = 0.5) -> list[dict[str, Any]]:
    """Aggregate a sweep dir: write summary.csv, summary.md and curves.png, print the table,
    return one row per configuration."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep dir {sweep_dir} does not exist")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise UserError(f"no sweep jobs in {sweep_dir} (no */.hydra/overrides.yaml below it)")
    groups, common = _group(jobs)
    rows = [_config_row(label, group, threshold) for label, group in groups.items()]
    s = Summary(sweep_dir, threshold, jobs, groups, common, rows)
    _write_text(sweep_dir / "summary.csv", _csv(rows))
    _write_text(sweep_dir / "summary.md", _markdown(s))
    plot_curves(s, sweep_dir / "curves.png")
    _print_table(s)
    log.info("sweep summary: %s", ", ".join(str(sweep_dir / name) for name in OUTPUTS))
    return rows


# Sweep dir -> jobs that did not finish, filled in as multiruns end: `tic-grpo sweep` exits
# non-zero when it is not 0, whichever launcher ran the jobs.
UNFINISHED_JOBS: dict[Path, int] = {}


class SummarizeSweep(Callback):
    """Registered under hydra.callbacks: summarises the sweep dir when a multirun ends."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            rows = summarize(sweep_dir, threshold=self.threshold)
            UNFINISHED_JOBS[sweep_dir] = sum(r["failed"] + r["incomplete"] for r in rows)
        except Exception as err:  # the jobs' results are on disk either way
            log.error(
                "could not summarise %s: %s: %s; retry with `tic-grpo sweep aggregate=%s`",
                sweep_dir,
                type(err).__name__,
                err,
                sweep_dir,
            )
