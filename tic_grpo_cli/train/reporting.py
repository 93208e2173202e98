"""What the training loop writes besides checkpoints: metrics rows, console lines, samples,
the start line and summary.json (train/loop.py calls these once per rollout or per run)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tic_grpo_cli import lora
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runs import checkpoint as ckpt
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.runs.logger import RunLogger
from tic_grpo_cli.runtime.distributed import Dist
from tic_grpo_cli.train.progress import format_row, print_samples
from tic_grpo_cli.train.rollout import pick_samples, rollout_metrics
from tic_grpo_cli.train.state import TrainState

log = logging.getLogger("tic_grpo")


class TrainingStopped(UserError):
    """The run stopped on purpose (signal, repeated non-finite updates); work is saved."""


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]; never for `every` <= 0 (off)."""
    return every > 0 and after // every > before // every


def report(
    logger: RunLogger, state: TrainState, rollout, step_rows: list[dict[str, Any]],
    timing: dict[str, float], cfg: DictConfig, is_main: bool,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Log one metrics row per optimizer step of the rollout (its metrics, `timing` and the
    step's own), the console line every `log_every` steps and samples every
    `log_samples_every`; count non-finite updates (skipped by the inner loop). Returns the
    rollout's completion tokens and the metrics its rows share (rollout metrics, timing,
    tokens/s), for the loop's warnings and progress line."""
    tr, before = cfg.trainer, state.step
    tokens = int(rollout.gen.completion_mask.sum())
    seconds = timing["time/rollout_s"] + timing["time/update_s"]
    shared = {
        **rollout_metrics(rollout, tr.group_size),
        "rollout": state.updates,
        **timing,
        "throughput/tokens_per_s": tokens / max(seconds, 1e-9),
    }
    for row in step_rows:
        state.step += 1
        state.nonfinite_streak = state.nonfinite_streak + 1 if row["nonfinite"] else 0
        state.nonfinite_total += row["nonfinite"]
        logger.log({"step": state.step, **shared, **row, "nonfinite_total": state.nonfinite_total})
    if crossed(before, state.step, tr.log_every):
        log.info(format_row({"step": state.step, **shared, **step_rows[-1]}))
    # The last step logs samples too: a run shorter than log_samples_every would otherwise
    # end without one sample to read (log_samples_every=0: none at all).
    last = state.step >= tr.max_steps and tr.log_samples_every > 0
    if is_main and (crossed(before, state.step, tr.log_samples_every) or last):
        samples = pick_samples(rollout)
        logger.log_samples(state.step, samples)
        print_samples(samples, state.step)
    return tokens, shared


def stop_if_diverged(tr: DictConfig, state: TrainState, run_dir: Path, logger) -> None:
    """Raise TrainingStopped after `trainer.max_nonfinite_steps` non-finite updates in a row."""
    if state.nonfinite_streak < tr.max_nonfinite_steps:
        return
    last = ckpt.list_checkpoints(run_dir)
    where = f"; last good checkpoint: {last[-1][1]}" if last else ""
    logger.finish({})
    raise TrainingStopped(
        f"stopped after {state.nonfinite_streak} non-finite updates in a "
        f"row (trainer.max_nonfinite_steps={tr.max_nonfinite_steps})"
        f"{where}; lower trainer.lr or check the reward"
    )


def open_logger(
    cfg: DictConfig, run_dir: Path, dist: Dist, state: TrainState, source: Path | None
) -> RunLogger:
    """The run's metrics.jsonl, samples.jsonl and W&B run (rank 0 only). Resumed from
    `source`: the same W&B run, the rows logged after the checkpoint's step dropped; a
    fresh run sets an earlier run's rows in the dir aside."""
    config = OmegaConf.to_container(cfg, resolve=True)
    logger = RunLogger(run_dir, cfg.wandb, config, state.wandb_id, enabled=dist.is_main)
    state.wandb_id = logger.wandb_id
    if source:
        logger.truncate_after(state.step)
        log.info("resumed from %s at step %d", source, state.step)
    else:
        logger.set_aside_earlier_run()
    return logger


def log_start(cfg: DictConfig, model, dtype: torch.dtype, device, run_dir: Path) -> None:
    """Log the run's one start line: model, parameters trained (LoRA's r, targets and count
    of the total), dtype, device, algorithm, batch shape, steps and run dir."""
    tr, adapter = cfg.trainer, cfg.model.lora
    trainable, total = lora.parameter_counts(model)
    if adapter.enabled:
        targets = ",".join(adapter.target_modules)
        params = f"LoRA r={adapter.r} on {targets}: {trainable / 1e6:.2f}M of {total / 1e6:.2f}M"
    else:
        params = f"{total / 1e6:.2f}M"
    log.info(
        "model %s (%s params trained, %s on %s) | algorithm %s | batch %d prompts x %d "
        "completions, K=%d minibatches x %d epoch(s) | %d steps | run dir %s",
        cfg.model.name_or_path,
        params,
        str(dtype).removeprefix("torch."),
        device,
        cfg.algorithm.name,
        tr.rollout_batch_size,
        tr.group_size,
        tr.rollout_batch_size // tr.minibatch_size,
        tr.ppo_epochs,
        tr.max_steps,
        run_dir,
    )


def summarize(
    cfg: DictConfig, state: TrainState, final_eval: float, metrics_path: Path
) -> dict[str, Any]:
    """summary.json: final and best eval accuracy, the mean reward of the last rollout, and
    the training time and throughput of the whole run (all its sessions)."""
    wall = state.wall_time_s
    k_minibatches = cfg.trainer.rollout_batch_size // cfg.trainer.minibatch_size
    rewards = [r["reward/mean"] for r in read_jsonl(metrics_path) if "reward/mean" in r]
    return {
        "final/eval_accuracy": final_eval,
        "best/eval_accuracy": state.best_eval,
        "final/reward": float(np.mean(rewards[-k_minibatches:])) if rewards else float("nan"),
        "steps": state.step,
        "rollouts": state.rollouts,
        "wall_time_s": wall,
        "throughput/tokens_per_s": state.tokens / max(wall, 1e-9),
        "nonfinite_total": state.nonfinite_total,
        "algorithm": cfg.algorithm.name,
        "seed": cfg.seed,
    }
