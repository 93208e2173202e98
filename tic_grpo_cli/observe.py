"""Everything a run reports, in one place: console, metrics.jsonl, samples, curves, W&B.

The same rows go to the local files and to W&B, so a user without an account sees the
whole run in the run dir.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("tic_grpo")

# Shown on the console, in this order, when present in a row.
CONSOLE_KEYS = (
    ("reward/mean", "reward", "{:.3f}"),
    ("accuracy", "acc", "{:.3f}"),
    ("eval/accuracy", "eval_acc", "{:.3f}"),
    ("clip_fraction", "clip", "{:.3f}"),
    ("ratio/max", "ratio_max", "{:.3f}"),
    ("loss", "loss", "{:+.4f}"),
    ("grad_norm", "gnorm", "{:.3f}"),
    ("completion_length/mean", "len", "{:.1f}"),
    ("throughput/tokens_per_s", "tok/s", "{:.0f}"),
)


@functools.cache
def console() -> Any:
    """The process's one rich Console on stdout: log lines, tables and the progress bar all
    print through it, so a live bar stays below what is printed above it."""
    from rich.console import Console

    return Console()


def console_handler() -> logging.Handler:
    """Rich output on a terminal, plain lines otherwise (CI, pipes, files)."""
    if sys.stdout.isatty():
        from rich.logging import RichHandler

        return RichHandler(console=console(), show_path=False, rich_tracebacks=False, markup=False)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s", "%H:%M:%S"))
    return handler


def format_row(row: dict[str, Any]) -> str:
    parts = [f"step {row['step']}"]
    for key, label, fmt in CONSOLE_KEYS:
        if key in row and row[key] is not None:
            parts.append(f"{label} {fmt.format(row[key])}")
    return " | ".join(parts)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            # A line cut short by a kill: everything before it is intact.
            break
    return rows


class RunLogger:
    """Appends rows to metrics.jsonl / samples.jsonl and mirrors them to W&B.

    `enabled=False` (every rank but 0 of a distributed run) writes nothing and starts no
    W&B run; `metrics_path` still names the file rank 0 writes.
    """

    def __init__(
        self,
        run_dir: Path,
        wandb_cfg: Any,
        config: dict[str, Any],
        resume_id: str | None,
        enabled: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.enabled = enabled
        self.wandb_run = (
            _start_wandb(self.run_dir, wandb_cfg, config, resume_id) if enabled else None
        )

    @property
    def wandb_id(self) -> str | None:
        return None if self.wandb_run is None else self.wandb_run.id

    def set_aside_earlier_run(self) -> None:
        """A fresh (not resumed) run in a dir an earlier run logged to: keep that run's rows,
        under another name, instead of appending the new run's to them."""
        if not self.enabled:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for path in (self.metrics_path, self.samples_path):
            if path.exists():
                kept = path.with_name(f"{path.stem}.earlier-{stamp}{path.suffix}")
                path.rename(kept)
                log.warning(
                    "%s held an earlier run's rows: moved to %s (resume=auto continues a run)",
                    path,
                    kept.name,
                )

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the file reads as one run."""
        from tic_grpo_cli.checkpoint import atomic_write_text

        if not self.enabled:
            return
        for path in (self.metrics_path, self.samples_path):
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _jsonable(v) for k, v in row.items()}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in clean.items() if k != "step"}, step=clean["step"])

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        with self.samples_path.open("a") as f:
            for sample in samples:
                f.write(json.dumps({"step": step, **sample}) + "\n")
        if self.wandb_run is not None and samples:
            import wandb

            columns = list(samples[0])
            table = wandb.Table(columns=columns, data=[[s[c] for c in columns] for s in samples])
            self.wandb_run.log({"samples": table}, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(summary)
            self.wandb_run.finish()
            self.wandb_run = None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _start_wandb(run_dir: Path, cfg: Any, config: dict[str, Any], resume_id: str | None) -> Any:
    mode = os.environ.get("WANDB_MODE", cfg.mode)
    if mode == "disabled":
        return None
    import wandb

    return wandb.init(
        mode=mode,
        dir=str(run_dir),
        project=cfg.project,
        entity=cfg.entity,
        name=cfg.name or run_dir.name,
        group=cfg.group,
        tags=list(cfg.tags),
        config=config,
        id=resume_id,
        resume="allow" if resume_id else None,
        settings=wandb.Settings(console="off", silent=True),
    )


def print_samples(samples: list[dict[str, Any]], step: int) -> None:
    """A few completions as a table on a terminal, as lines otherwise."""
    if not sys.stdout.isatty():
        for s in samples:
            log.info(
                "sample step %d | %r -> %r | reward %.2f adv %+.2f",
                step,
                s["prompt"][-60:],
                s["completion"][:60],
                s["reward"],
                s["advantage"],
            )
        return
    from rich.table import Table

    table = Table(title=f"samples at step {step}")
    for column in ("prompt", "completion", "reward", "advantage"):
        table.add_column(column)
    for s in samples:
        table.add_row(
            s["prompt"][-60:], s["completion"][:60], f"{s['reward']:.2f}", f"{s['advantage']:+.2f}"
        )
    console().print(table)


def plot_curves(metrics_path: Path, out_path: Path) -> None:
    """Train reward and eval accuracy against step, for a glance without W&B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(metrics_path)
    train = [(r["step"], r["reward/mean"]) for r in rows if r.get("reward/mean") is not None]
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if r.get("eval/accuracy") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, points, title in (
        (axes[0], train, "train reward (mean)"),
        (axes[1], evals, "eval accuracy"),
    ):
        if points:
            xs, ys = zip(*points, strict=False)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_path)
