"""Evaluation during training: accuracy on the test split at step 0, every
`trainer.eval_every` steps and at the end, logged as `eval/*` rows of metrics.jsonl and drawn
into the run's curves.png. (`tic-grpo eval` scores saved checkpoints afterwards: evaluate.py.)
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig

from tic_grpo_cli.evaluation.model_eval import evaluate_model, length_limit_warning
from tic_grpo_cli.runs.curves import plot_curves, run_title
from tic_grpo_cli.runs.logger import RunLogger
from tic_grpo_cli.runtime.distributed import Dist
from tic_grpo_cli.train.state import TrainState

log = logging.getLogger("tic_grpo")


class TrainEval:
    """Scores the policy being trained; rank 0 evaluates the whole model while the other
    ranks wait for its result, so every rank returns the same accuracy."""

    def __init__(
        self,
        cfg: DictConfig,
        model,
        tokenizer,
        task,
        logger: RunLogger,
        dist: Dist,
        device: torch.device,
        run_dir: Path,
    ):
        self.cfg, self.model, self.tokenizer, self.task = cfg, model, tokenizer, task
        self.logger, self.dist, self.device, self.run_dir = logger, dist, device, run_dir
        self.warned_cut = False  # the length-limit warning is given once per run

    def __call__(self, state: TrainState) -> float:
        """Evaluate at `state.step`; update `state.last_eval` / `best_eval`; return accuracy
        (a fraction in [0, 1])."""
        tr, dist = self.cfg.trainer, self.dist
        amp = self.cfg.hardware.mixed_precision == "bf16"
        metrics = None
        with (
            dist.full_params(self.model),
            torch.autocast(self.device.type, torch.bfloat16, enabled=amp),
        ):
            if dist.is_main:
                metrics, _ = evaluate_model(
                    self.model,
                    self.tokenizer,
                    self.task,
                    split="test",
                    limit=tr.eval_limit,
                    max_new_tokens=tr.max_completion_length,
                    batch_size=tr.eval_batch_size,
                    seed=self.cfg.seed,
                    skip_special_tokens=self.cfg.dataset.reward.skip_special_tokens,
                )
        metrics = dist.broadcast_object(metrics)
        limit, key = tr.max_completion_length, "trainer.max_completion_length"
        warning = length_limit_warning(metrics, limit, key)
        if warning and dist.is_main and not self.warned_cut:
            log.warning(warning)
            self.warned_cut = True
        self.model.train()
        state.last_eval = metrics["accuracy"]
        best = state.best_eval
        state.best_eval = state.last_eval if math.isnan(best) else max(best, state.last_eval)
        self.logger.log({"step": state.step, **{f"eval/{k}": v for k, v in metrics.items()}})
        log.info(
            "eval at step %d: accuracy %.3f (best %.3f)",
            state.step,
            state.last_eval,
            state.best_eval,
        )
        if dist.is_main:
            plot_curves(self.logger.metrics_path, self.run_dir / "curves.png", run_title(self.cfg))
        return state.last_eval
