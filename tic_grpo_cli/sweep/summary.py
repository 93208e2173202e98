"""`tic-grpo sweep`: summarise a Hydra multirun of training jobs.

Each job dir holds `.hydra/overrides.yaml` and, when it ended, `summary.json` (finished) or
`error.json` (failed); a dir with neither was killed or is still running ("incomplete").
Jobs are grouped into configurations by their overrides minus the seed; every metric is
reported over seeds as mean, sample std and a two-sided 95% Student-t interval
mean ± t(0.975, n-1) · std / sqrt(n).

Where things are: sweep_jobs.py reads job dirs and groups them, sweep_stats.py computes the
interval, sweep_report.py writes the table and draws the curves; this module ties them together.
It is imported at every run (the Hydra callback below is instantiated even for a single
`tic-grpo train`), so matplotlib and rich are imported only where they are used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runs.files import atomic_write_text
from tic_grpo_cli.sweep.jobs import (
    find_jobs,
    finished_summary,
    group_jobs,
    record_failure,
)
from tic_grpo_cli.sweep.report import (
    Summary,
    config_row,
    csv_text,
    markdown,
    plot_curves,
    print_table,
)

# finished_summary and record_failure are the markers cli.py writes and reads for each job.
__all__ = ["UNFINISHED_JOBS", "SummarizeSweep", "finished_summary", "record_failure", "summarize"]

log = logging.getLogger("tic_grpo")

OUTPUTS = ("summary.csv", "summary.md", "curves.png")


def summarize(sweep_dir: Path, threshold: float = 0.5) -> list[dict[str, Any]]:
    """Aggregate a sweep dir: write summary.csv, summary.md and curves.png, print the table,
    return one row per configuration."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep dir {sweep_dir} does not exist")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise UserError(f"no sweep jobs in {sweep_dir} (no */.hydra/overrides.yaml below it)")
    groups, common = group_jobs(jobs)
    rows = [config_row(label, group, threshold) for label, group in groups.items()]
    s = Summary(sweep_dir, threshold, jobs, groups, common, rows)
    atomic_write_text(sweep_dir / "summary.csv", csv_text(rows))
    atomic_write_text(sweep_dir / "summary.md", markdown(s))
    plot_curves(s, sweep_dir / "curves.png")
    print_table(s)
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
