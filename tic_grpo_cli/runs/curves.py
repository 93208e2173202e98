"""curves.png: a training run's reward and eval accuracy against step, as a figure a reader
can keep: it names the run (algorithm, model, data, seed), steps are whole numbers, and a
dashed line marks each step the run was resumed at.

Resumes are read from the run's train.log, where every resumed session writes
`resumed from <checkpoint> at step N` (train/loop.py), rather than from a marker row in
metrics.jsonl: that file must read the same for a resumed run as for an uninterrupted one
(tests/train/test_state.py), and a marker row would break that.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tic_grpo_cli.runs.files import atomic_write, read_jsonl

_RESUMED = re.compile(r"resumed from .* at step (\d+)\s*$")
RUN_LOG = "train.log"


def run_title(cfg: Any) -> str:
    """`tic · tiny · arithmetic · seed 0`: what a figure of one run must say it shows."""
    model = Path(str(cfg.model.name_or_path)).name
    data = cfg.dataset
    dataset = Path(str(data.path)).name if data.kind == "hf" and data.path else data.kind
    return f"{cfg.algorithm.name} · {model} · {dataset} · seed {cfg.seed}"


def resume_steps(run_dir: Path) -> list[int]:
    """The steps this run was resumed at, oldest first, from its train.log.

    A session resumed from an earlier checkpoint rewinds the run (its metrics rows after
    that step were dropped), so marks past it are dropped too."""
    path = Path(run_dir) / RUN_LOG
    if not path.is_file():
        return []
    steps: list[int] = []
    with path.open(errors="replace") as f:
        for line in f:
            match = _RESUMED.search(line)
            if match:
                step = int(match.group(1))
                steps = [s for s in steps if s < step] + [step]
    return steps


def plot_curves(
    metrics_path: Path, out_path: Path, title: str = "", resumed: list[int] | None = None
) -> None:
    """Write curves.png: train reward and eval accuracy against step, for a glance without
    W&B. `title` names the run (`run_title`); `resumed`: steps to mark (default: read from
    the train.log beside `metrics_path`)."""
    import matplotlib.pyplot as plt

    if resumed is None:
        resumed = resume_steps(Path(metrics_path).parent)
    fig = curves_figure(read_jsonl(metrics_path), title, resumed)
    atomic_write(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def curves_figure(rows: list[dict[str, Any]], title: str = "", resumed: Sequence[int] = ()) -> Any:
    """The matplotlib figure of `plot_curves` from metrics.jsonl rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = [(r["step"], r["reward/mean"]) for r in rows if r.get("reward/mean") is not None]
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if r.get("eval/accuracy") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, points, label in (
        (axes[0], train, "train reward (mean)"),
        (axes[1], evals, "eval accuracy"),
    ):
        if points:
            xs, ys = zip(*points, strict=False)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=4)
        for i, step in enumerate(resumed):
            ax.axvline(step, color="grey", ls="--", lw=1, label="resumed" if i == 0 else None)
        if resumed:
            ax.legend(loc="best", fontsize=8)
        ax.set_title(label)
        ax.set_xlabel("optimizer step")
        # A short run's axis would otherwise read 0.5, 1.0, 1.5 ... steps.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
