"""`tic-grpo train`: the RL loop of the TIC-GRPO paper (arXiv 2508.02833), top to bottom.

    repeat: sample N prompts x G completions from pi_old := pi_theta  (rollout)
            score them, group-normalise rewards into advantages
            split into K = N / minibatch_size minibatches, one optimizer step each (inner loop)
            evaluate / checkpoint at rollout boundaries

`train(cfg, run_dir) -> summary` is a pure function of its config (plus the run dir it
writes); the Hydra entry point in cli.py only wraps it.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from tic_grpo_cli import lora
from tic_grpo_cli.config.resume_argv import overrides_file
from tic_grpo_cli.config.validation import validate_train
from tic_grpo_cli.data import Examples, Task, build_task
from tic_grpo_cli.data.lengths import check_prompts, completion_limit
from tic_grpo_cli.errors import Interrupted, UserError, program
from tic_grpo_cli.models import (
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from tic_grpo_cli.runs import checkpoint as ckpt
from tic_grpo_cli.runs import run_dir as run_dirs
from tic_grpo_cli.runs.files import atomic_write_json, read_jsonl
from tic_grpo_cli.runs.logger import RunLogger
from tic_grpo_cli.runs.policy_checkpoint import save_checkpoint
from tic_grpo_cli.runtime import launch
from tic_grpo_cli.runtime.distributed import Dist
from tic_grpo_cli.runtime.threads import CpuThreads
from tic_grpo_cli.train.periodic_eval import TrainEval
from tic_grpo_cli.train.policy import Policy, load_policy, policy_model_config
from tic_grpo_cli.train.progress import TrainProgress, format_row, print_samples
from tic_grpo_cli.train.rollout import (
    PromptSampler,
    collect_rollout,
    gather_rollout,
    pick_samples,
    rollout_metrics,
)
from tic_grpo_cli.train.signals import LearningSignals
from tic_grpo_cli.train.staleness import QueuedRollout, RolloutQueue, rollouts_needed
from tic_grpo_cli.train.state import (
    TrainState,
    finished_summary,
    restore,
    rng_state,
    rollout_seed,
)
from tic_grpo_cli.train.state import load as load_checkpoint_state
from tic_grpo_cli.train.update import policy_update

log = logging.getLogger("tic_grpo")


class TrainingStopped(UserError):
    """The run stopped on purpose (signal, repeated non-finite updates); work is saved."""


class StopFlag:
    """SIGINT/SIGTERM ask for a clean stop at the end of the current rollout; a second
    signal stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning(
            "%s received: finishing this rollout, then saving a checkpoint "
            "(send it again to stop now)",
            signal.Signals(signum).name,
        )

    @contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def seed_everything(seed: int) -> None:
    """Python, numpy, torch and every accelerator (transformers' set_seed); numpy takes only
    seeds in [0, 2**32), so the seed is folded into that range (the ones in it unchanged)."""
    set_seed(seed % 2**32)


def save(
    cfg: DictConfig, run_dir: Path, dist: Dist, policy: Policy, state: TrainState,
    sampler: PromptSampler, generator: torch.Generator, queue: RolloutQueue,
) -> Path:  # fmt: skip
    """Write `checkpoints/step_<state.step>` (atomically; rank 0 writes, FSDP shards the
    optimizer state) with everything `resume` restores, the run's overrides included;
    prune (`trainer.keep_last`, `trainer.keep_every`)."""
    state.tick()
    trainer_state = {
        **state.to_checkpoint(),
        "sampler": sampler.state(),
        "scheduler": policy.scheduler.state_dict(),
        "rng": rng_state(generator),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "queue": queue.state(dist),
    }
    path = save_checkpoint(
        dist, run_dir, state.step, policy.model, policy.tokenizer, policy.optimizer, trainer_state,
        keep_last=cfg.trainer.keep_last, keep_every=cfg.trainer.keep_every,
        files=overrides_file(),
    )  # fmt: skip
    log.info("checkpoint saved: %s", path)
    return path


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and after // every > before // every


def report(
    logger: RunLogger, state: TrainState, rollout, step_rows: list[dict[str, Any]],
    timing: dict[str, float], cfg: DictConfig, is_main: bool,
) -> int:  # fmt: skip
    """Log one metrics row per optimizer step of the rollout (its metrics, `timing` and the
    step's own), the console line every `log_every` steps and samples every
    `log_samples_every`; count non-finite updates (skipped by the inner loop). Returns the
    rollout's completion tokens."""
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
    if _crossed(before, state.step, tr.log_every):
        log.info(format_row({"step": state.step, **shared, **step_rows[-1]}))
    if is_main and _crossed(before, state.step, tr.log_samples_every):
        samples = pick_samples(rollout)
        logger.log_samples(state.step, samples)
        print_samples(samples, state.step)
    return tokens


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


def build_train_task(cfg: DictConfig, tokenizer) -> tuple[Task, Examples]:
    """The task and its train split, checked with the tokenizer alone (the chat template,
    the prompts against dataset.max_prompt_length and, with trainer.max_completion_length
    tokens after them, the model's context), so data errors precede the model load. Raises
    UserError; a missing train split before any prompt length."""
    task = build_task(cfg.dataset, tokenizer, check_splits=())
    task.split("train")  # no prompt to train on says more than a prompt's length
    limit = completion_limit(
        "trainer.max_completion_length", cfg.trainer.max_completion_length, cfg.dataset
    )
    check_prompts(task, cfg.dataset, tokenizer, ("train", "test"), limit)
    return task, task.split("train")  # as check_prompts left it (skip_bad_rows)


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


def sample_rollout(
    cfg: DictConfig, policy: Policy, task, train_split, sampler: PromptSampler,
    generator: torch.Generator, state: TrainState, dist: Dist,
) -> QueuedRollout:  # fmt: skip
    """Generate and score the run's next rollout (number `state.rollouts`) with the current
    policy, on the next prompts; count it."""
    tr = cfg.trainer
    t0 = time.perf_counter()
    generator.manual_seed(rollout_seed(cfg.seed, state.rollouts, dist.rank))
    # Every rank draws the same global batch and keeps prompts rank, rank + W, ...:
    # the prompts trained on do not depend on the number of ranks.
    chosen = sampler.take(tr.rollout_batch_size)[dist.rank :: dist.world_size]
    examples = [train_split[i] for i in chosen]
    with dist.full_params(policy.model):
        rollout = collect_rollout(
            policy.model, policy.tokenizer, task, examples, cfg, generator, dist
        )
    item = QueuedRollout(rollout, state.rollouts, state.updates, time.perf_counter() - t0,
                         sampler.epoch)  # fmt: skip
    state.rollouts += 1
    return item


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run RL fine-tuning as configured; write the run dir; return the final metrics (also
    written to summary.json). Raises UserError for bad input, TrainingStopped or
    Interrupted when the run stops early (its last checkpoint saved)."""
    validate_train(cfg)
    tr, hw = cfg.trainer, cfg.hardware
    dist = launch.setup(hw)  # one process per device under hardware=ddp|fsdp
    run_dir = run_dirs.shared(run_dir, dist)
    dist.share(tr.minibatch_size, "trainer.minibatch_size")  # fails before anything loads
    device = resolve_device(hw)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", hw.nproc_per_node))
    threads = CpuThreads(hw.num_threads, share=local_ranks)
    threads.start()
    seed_everything(cfg.seed)
    dtype = resolve_dtype(cfg.model, hw, device)
    source, saved = load_checkpoint_state(cfg, run_dir)
    finished = finished_summary(saved, source, tr.max_steps)
    if finished is not None:  # resuming a finished run would redo its last eval and save
        return finished
    # Data built with the tokenizer alone (for chat templates): its errors precede the model load.
    tokenizer = load_tokenizer(policy_model_config(cfg, source))
    task, train_split = build_train_task(cfg, tokenizer)
    policy = load_policy(cfg, dist, device, dtype, source, tokenizer)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    sampler = PromptSampler(len(train_split), cfg.seed, **(saved or {}).get("sampler", {}))
    state = TrainState()
    if saved:
        state = restore(saved, source, policy, generator, dist)
    queue = RolloutQueue(tr.staleness)
    queue.restore((saved or {}).get("queue"), dist, source)
    steps_per_rollout = tr.rollout_batch_size // tr.minibatch_size * tr.ppo_epochs
    needed = rollouts_needed(tr.max_steps, steps_per_rollout)
    logger = open_logger(cfg, run_dir, dist, state, source)
    log_start(cfg, policy.model, dtype, device, run_dir)
    evaluate = TrainEval(cfg, policy.model, policy.tokenizer, task, logger, dist, device, run_dir)
    started, stop = time.perf_counter(), StopFlag()
    signals = LearningSignals(tr.max_completion_length)  # warns when the run cannot learn
    state.tick(restart=True)
    if state.step == 0 and tr.eval_every > 0:
        evaluate(state)
    # A live bar on rank 0's terminal, a heartbeat line in a log; rank 0 only.
    progress = TrainProgress(tr.max_steps, state.step, enabled=dist.is_main, staleness=tr.staleness)
    with stop.installed(), progress:
        # A signal may reach only some ranks (e.g. a scheduler's SIGTERM): all stop together.
        while state.step < tr.max_steps and not dist.any(stop.signal is not None):
            # Generate with the current policy; with trainer.staleness=d, train the rollout
            # generated d rollouts ago (train/staleness.py). d = 0: the one just generated.
            if state.rollouts < needed:
                queue.push(sample_rollout(cfg, policy, task, train_split, sampler, generator,
                                          state, dist))  # fmt: skip
            if not queue.ready(generation_done=state.rollouts >= needed):
                continue  # the queue fills from the initial policy before the first update
            item = queue.pop()
            t1 = time.perf_counter()
            step_rows = policy_update(
                policy, item.rollout, cfg, generator, dist, max_steps=tr.max_steps - state.step
            )
            t2 = time.perf_counter()
            state.updates += 1
            timing = {"epoch": item.epoch, "time/rollout_s": item.seconds,
                      "time/update_s": t2 - t1, "throughput/cpu_threads": threads.adjust()}  # fmt: skip
            if tr.staleness:  # how old the data is: policy versions, and which rollout it was
                timing |= {
                    "staleness": state.updates - 1 - item.version,
                    "rollout/index": item.index,
                }
            # Metrics and samples describe the whole batch, whatever the number of ranks.
            rollout = gather_rollout(item.rollout, dist, tr.group_size)
            before = state.step
            tokens = report(logger, state, rollout, step_rows, timing, cfg, dist.is_main)
            state.tokens += tokens
            if (warning := signals(rollout_metrics(rollout, tr.group_size))) and dist.is_main:
                log.warning(warning)
            progress.update(state.step, reward=float(rollout.rewards.mean()),
                            eval_accuracy=state.last_eval,
                            tokens_per_s=tokens / (item.seconds + t2 - t1))  # fmt: skip
            if _crossed(before, state.step, tr.log_every):
                progress.beat()
            stop_if_diverged(tr, state, run_dir, logger)
            elapsed = time.perf_counter() - started
            if tr.max_time_minutes and dist.any(elapsed > 60 * tr.max_time_minutes):
                log.info("trainer.max_time_minutes reached at step %d", state.step)
                break
            if state.step < tr.max_steps and _crossed(before, state.step, tr.eval_every):
                evaluate(state)
            if state.step < tr.max_steps and _crossed(before, state.step, tr.save_every):
                save(cfg, run_dir, dist, policy, state, sampler, generator, queue)

    if dist.any(stop.signal is not None):
        path = save(cfg, run_dir, dist, policy, state, sampler, generator, queue)
        logger.finish({})
        where = f"interrupted at step {state.step}, checkpoint {path}"
        # The run's overrides are in the checkpoint: this command alone continues it in place.
        command = f"{program()} train resume={shlex.quote(str(run_dir))}"
        # A rank the signal did not reach stops as the scheduler's SIGTERM would have it.
        signum = stop.signal or signal.SIGTERM
        raise Interrupted(f"{where}; continue with: {command}", where, signum)
    final_eval = state.last_eval
    if tr.eval_every > 0 or math.isnan(final_eval):
        final_eval = evaluate(state)
    save(cfg, run_dir, dist, policy, state, sampler, generator, queue)
    summary = summarize(cfg, state, final_eval, logger.metrics_path)
    if dist.is_main:
        atomic_write_json(run_dir / "summary.json", summary)
    logger.finish(summary)
    log.info(
        "done: eval accuracy %.3f (best %.3f), %d steps in %.0f s -> %s",
        final_eval, state.best_eval, state.step, state.wall_time_s, run_dir,
    )  # fmt: skip
    return summary
