"""How `tic-grpo eval` shows its results: the terminal table and the accuracy-vs-step plot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

# Short table headers, so a table of 8 samples fits an 80-column terminal.
HEADERS = {
    "accuracy": "acc",
    "reward/mean": "reward",
    "completion_length/mean": "len",
    "unparseable_fraction": "unparsed",
    "timed_out_fraction": "timeout",
    "truncated_fraction": "cut",
    "num_examples": "n",
}


def _format_value(key: str, value: Any) -> str:
    if key == "num_examples":
        return str(int(value))
    if key == "completion_length/mean":
        return f"{value:.1f}"
    return f"{value:.3f}"


def format_metrics(metrics: dict[str, float]) -> str:
    """One log line: `accuracy 0.500 | reward/mean 0.500 | ...`."""
    return " | ".join(f"{k} {_format_value(k, v)}" for k, v in metrics.items())


def title_of(cfg: DictConfig, dataset: dict[str, Any]) -> str:
    """The table and plot title: data set, split, how many examples, the decoding."""
    ev = cfg.eval
    decoding = "greedy" if ev.temperature == 0 else f"T={ev.temperature}, {ev.num_samples} samples"
    return (
        f"{dataset['name']} / {dataset['split']}: {dataset['num_evaluated']} of "
        f"{dataset['size']} examples, {decoding}"
    )


def print_table(entries: list[dict[str, Any]], title: str, caption: str | None = None) -> None:
    """One row per checkpoint or model; plain text when stdout is not a terminal."""
    from rich.console import Console
    from rich.table import Table

    metrics = entries[0]["metrics"]
    # pass@1 is c/n, the same number as accuracy: one column is enough. With k samples that
    # column is avg@k, named so (accuracy stays in results.json).
    same = {"pass@1", "accuracy"} if any(k.startswith("avg@") for k in metrics) else {"pass@1"}
    keys = [key for key in metrics if key not in same]
    table = Table(title=title, caption=caption)
    # A run's checkpoints may follow its base model (checkpoint.base): still a checkpoint table.
    checkpoints = any(e["checkpoint"] for e in entries)
    table.add_column("checkpoint" if checkpoints else "model", overflow="fold")
    for key in keys:
        table.add_column(HEADERS.get(key, key), justify="right")
    for entry in entries:
        table.add_row(entry["label"], *(_format_value(k, entry["metrics"][k]) for k in keys))
    # Off a terminal rich assumes 80 columns and would squeeze the numbers.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def plot_accuracy_vs_step(entries: list[dict[str, Any]], out_path: Path, title: str = "") -> None:
    """Accuracy (avg@k when sampled, with pass@k and maj@k) against training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    points = sorted((e for e in entries if e["step"] is not None), key=lambda e: e["step"])
    steps = [e["step"] for e in points]
    n = max((int(k[5:]) for k in entries[0]["metrics"] if k.startswith("pass@")), default=1)
    curves = {"accuracy": "accuracy" if n == 1 else f"avg@{n}"}
    if n > 1:
        curves |= {f"pass@{n}": f"pass@{n}", f"maj@{n}": f"maj@{n}"}
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for key, label in curves.items():
        ax.plot(steps, [e["metrics"][key] for e in points], marker="o", label=label)
    base = next((e for e in points if e["checkpoint"] is None and e["step"] == 0), None)
    if base is not None:  # checkpoint.base: the model the run started from
        ax.annotate(
            "base model", (0, base["metrics"]["accuracy"]), textcoords="offset points",
            xytext=(4, 8), fontsize=8,
        )  # fmt: skip
    ax.legend()
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_path)
