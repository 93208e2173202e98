"""What a training run logs to disk and W&B: metrics.jsonl, samples.jsonl (curves.png: curves.py).

The same rows go to the local files and to W&B, so a user without an account sees the
whole run in the run dir.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from tic_grpo_cli.runs.files import atomic_write_jsonl, read_jsonl

log = logging.getLogger("tic_grpo")


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
        """On resume, drop rows logged after the checkpoint so the file reads as one run.

        An offline W&B run cannot be cut back the same way, and the interrupted session's
        folder holds rows past the checkpoint, which a resumed session would log again. So
        the resumed offline run replays the kept rows of metrics.jsonl into its own folder,
        which then holds the whole history once, and the earlier folders of the run move to
        wandb/superseded/ (`wandb sync` the current folder only; nothing is deleted)."""
        if not self.enabled:
            return
        for path in (self.metrics_path, self.samples_path):
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
            atomic_write_jsonl(path, rows)
        if self.wandb_run is not None and self.wandb_run.settings.mode == "offline":
            self._supersede_earlier_offline_runs()
            for row in read_jsonl(self.metrics_path):
                self._to_wandb(row)

    def _supersede_earlier_offline_runs(self) -> None:
        current = Path(self.wandb_run.dir).parent  # wandb/offline-run-<time>-<id>/files
        root = current.parent
        for folder in sorted(root.glob(f"offline-run-*-{self.wandb_run.id}")):
            if folder != current:
                (root / "superseded").mkdir(exist_ok=True)
                folder.rename(root / "superseded" / folder.name)
                log.info("W&B: %s superseded by %s (it holds the whole history)",
                         folder.name, current.name)  # fmt: skip

    def _to_wandb(self, clean: dict[str, Any]) -> None:
        self.wandb_run.log({k: v for k, v in clean.items() if k != "step"}, step=clean["step"])

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _jsonable(v) for k, v in row.items()}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.wandb_run is not None:
            self._to_wandb(clean)

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
