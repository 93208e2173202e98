"""`tic-grpo train`: the RL loop of the TIC-GRPO paper (arXiv 2508.02833), top to bottom.

    repeat: sample N prompts x G completions from pi_old := pi_theta  (rollout)
            score them, group-normalise rewards into advantages
            split into K = N / minibatch_size minibatches, one optimizer step each (inner loop)
            evaluate / checkpoint at rollout boundaries

`train(cfg, run_dir) -> summary` is a pure function of its config (plus the run dir it
writes); the Hydra entry point in cli.py only wraps it.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import shlex
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, read_write

from tic_grpo_cli.config.resume_argv import overrides_file
from tic_grpo_cli.config.validation import validate_train
from tic_grpo_cli.data import build_task
from tic_grpo_cli.errors import Interrupted, program
from tic_grpo_cli.models import (
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from tic_grpo_cli.runs import run_dir as run_dirs
from tic_grpo_cli.runs.files import atomic_write_json
from tic_grpo_cli.runs.logger import RunLogger
from tic_grpo_cli.runs.policy_checkpoint import save_checkpoint
from tic_grpo_cli.runtime import launch
from tic_grpo_cli.runtime.distributed import Dist
from tic_grpo_cli.runtime.memory import return_freed_memory
from tic_grpo_cli.runtime.threads import CpuThreads
from tic_grpo_cli.train.periodic_eval import TrainEval
from tic_grpo_cli.train.progress import TrainProgress
from tic_grpo_cli.train.reporting import (
    crossed,
    log_start,
    open_logger,
    report,
    stop_if_diverged,
    summarize,
)
from tic_grpo_cli.train.rollout import (
    PromptSampler,
    collect_rollout,
    gather_rollout,
    rollout_metrics,
)
from tic_grpo_cli.train.signals import LearningSignals
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
        """Handle SIGINT and SIGTERM with this flag inside the block; restore after."""
        previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (the sampler has its own)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(cfg: DictConfig):
    """Linear warm-up, then constant, cosine decay to zero at max_steps, or constant with a
    linear decay to zero over the last decay_fraction of the steps (wsd)."""
    warmup, total, schedule = cfg.warmup_steps, cfg.max_steps, cfg.lr_schedule
    decay = max(1, round(cfg.decay_fraction * total))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if schedule == "wsd":
            return min(1.0, max(0.0, (total - step) / decay))
        return 1.0

    return factor


@dataclass
class Policy:
    """What the inner loop updates: the policy, its optimizer and schedule, and the frozen
    models some algorithms read (grpo_no_is's pi_old copy, a KL term's reference)."""

    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    frozen: Any = None
    ref_model: Any = None


def policy_model_config(cfg: DictConfig, source: Path | None) -> DictConfig:
    """The model config to load: `cfg.model`, or the checkpoint `source` when resuming."""
    model_cfg = copy.deepcopy(cfg.model)
    if source:
        with read_write(model_cfg):
            model_cfg.name_or_path = str(source)
            model_cfg.gguf_file = model_cfg.gguf_package = None
    return model_cfg


def load_policy(
    cfg: DictConfig,
    dist: Dist,
    device: torch.device,
    dtype: torch.dtype,
    source: Path | None,
    tokenizer: Any = None,
) -> Policy:
    """The model to train (the checkpoint `source` when resuming), wrapped for the ranks,
    with AdamW and the learning-rate schedule of `lr_lambda`. `tokenizer`: the one
    `load_tokenizer` already returned for this model, if any."""
    hw, tr = cfg.hardware, cfg.trainer
    model_cfg = policy_model_config(cfg, source)
    storage = dist.storage_dtype(dtype)
    model, tokenizer = load_model_and_tokenizer(
        model_cfg, device, storage, hw.mixed_precision, tokenizer
    )
    frozen = copy.deepcopy(model) if cfg.algorithm.name == "grpo_no_is" else None
    ref_model = None
    if cfg.algorithm.kl_coef > 0:
        ref_model, _ = load_model_and_tokenizer(cfg.model, device, storage, hw.mixed_precision)
        ref_model.eval().requires_grad_(False)
    model, frozen, ref_model = (dist.wrap(m, dtype) for m in (model, frozen, ref_model))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=tr.lr, weight_decay=tr.weight_decay, betas=(tr.adam_beta1, tr.adam_beta2)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tr))
    return Policy(model, tokenizer, optimizer, scheduler, frozen, ref_model)


def save(
    cfg: DictConfig, run_dir: Path, dist: Dist, policy: Policy, state: TrainState,
    sampler: PromptSampler, generator: torch.Generator,
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
    }
    path = save_checkpoint(
        dist, run_dir, state.step, policy.model, policy.tokenizer, policy.optimizer, trainer_state,
        keep_last=cfg.trainer.keep_last, keep_every=cfg.trainer.keep_every,
        files=overrides_file(),
    )  # fmt: skip
    log.info("checkpoint saved: %s", path)
    return path


@dataclass
class Saver:
    """`save` with the run's fixed arguments, at most once per step: a stop signal that
    arrives during a rollout ending on a `save_every` step reuses that step's checkpoint
    instead of writing (and pruning) the same one again."""

    cfg: DictConfig
    run_dir: Path
    dist: Dist
    policy: Policy
    sampler: PromptSampler
    generator: torch.Generator
    last: tuple[int, Path] | None = None  # (step, checkpoint) of the latest save

    def __call__(self, state: TrainState) -> Path:
        if self.last is not None and self.last[0] == state.step:
            return self.last[1]
        path = save(self.cfg, self.run_dir, self.dist, self.policy, state, self.sampler,
                    self.generator)  # fmt: skip
        self.last = (state.step, path)
        return path


@dataclass
class Session:
    """Everything one session of a run holds while it trains (built by `train`)."""

    cfg: DictConfig
    run_dir: Path
    dist: Dist
    policy: Policy
    train_split: Any
    task: Any
    sampler: PromptSampler
    generator: torch.Generator
    state: TrainState
    logger: RunLogger
    evaluate: TrainEval
    threads: CpuThreads
    save: Saver
    progress: TrainProgress
    signals: LearningSignals


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
    if device.type == "cpu":
        return_freed_memory()  # RSS follows the live tensors, step after step (memory.py)
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
    task = build_task(cfg.dataset, tokenizer)
    train_split = task.split("train")
    policy = load_policy(cfg, dist, device, dtype, source, tokenizer)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    sampler = PromptSampler(len(train_split), cfg.seed, **(saved or {}).get("sampler", {}))
    state = TrainState()
    if saved:
        state = restore(saved, source, policy, generator, dist)
    logger = open_logger(cfg, run_dir, dist, state, source)
    log_start(cfg, policy.model, dtype, device, run_dir)
    evaluate = TrainEval(cfg, policy.model, policy.tokenizer, task, logger, dist, device, run_dir)
    session = Session(
        cfg, run_dir, dist, policy, train_split, task, sampler, generator, state, logger,
        evaluate, threads, Saver(cfg, run_dir, dist, policy, sampler, generator),
        # A live bar on rank 0's terminal, a heartbeat line in a log; rank 0 only.
        TrainProgress(tr.max_steps, state.step, enabled=dist.is_main),
        LearningSignals(tr.max_completion_length),  # warns when the run cannot learn
    )  # fmt: skip
    state.tick(restart=True)
    if state.step == 0 and tr.eval_every > 0:
        evaluate(state)
    started, stop = time.perf_counter(), StopFlag()
    with stop.installed(), session.progress:
        # A signal may reach only some ranks (e.g. a scheduler's SIGTERM): all stop together.
        while state.step < tr.max_steps and not dist.any(stop.signal is not None):
            if not one_rollout(session, started):
                break
    if dist.any(stop.signal is not None):
        interrupted(session, stop.signal)
    return finish(session)


def one_rollout(run: Session, started: float) -> bool:
    """Sample, score and train on one rollout; log, warn, evaluate and save as the trainer
    settings ask. Returns False when `trainer.max_time_minutes` (counted from `started`,
    a perf_counter time) has run out. Raises
    TrainingStopped after too many non-finite updates in a row."""
    cfg, dist, state, policy = run.cfg, run.dist, run.state, run.policy
    tr = cfg.trainer
    t0 = time.perf_counter()
    run.generator.manual_seed(rollout_seed(cfg.seed, state.rollouts, dist.rank))
    # Every rank draws the same global batch and keeps prompts rank, rank + W, ...:
    # the prompts trained on do not depend on the number of ranks.
    chosen = run.sampler.take(tr.rollout_batch_size)[dist.rank :: dist.world_size]
    examples = [run.train_split[i] for i in chosen]
    with dist.full_params(policy.model):
        rollout = collect_rollout(
            policy.model, policy.tokenizer, run.task, examples, cfg, run.generator, dist
        )
    t1 = time.perf_counter()
    step_rows = policy_update(
        policy.model, policy.frozen, policy.ref_model, policy.optimizer,
        policy.scheduler, rollout, cfg, run.generator, dist,
    )  # fmt: skip
    t2 = time.perf_counter()
    state.rollouts += 1
    timing = {"epoch": run.sampler.epoch, "time/rollout_s": t1 - t0, "time/update_s": t2 - t1,
              "throughput/cpu_threads": run.threads.adjust()}  # fmt: skip
    # Metrics and samples describe the whole batch, whatever the number of ranks.
    rollout = gather_rollout(rollout, dist, tr.group_size)
    before = state.step
    tokens = report(run.logger, state, rollout, step_rows, timing, cfg, dist.is_main)
    state.tokens += tokens
    if (warning := run.signals(rollout_metrics(rollout, tr.group_size))) and dist.is_main:
        log.warning(warning)
    run.progress.update(state.step, reward=float(rollout.rewards.mean()),
                        eval_accuracy=state.last_eval, tokens_per_s=tokens / (t2 - t0))  # fmt: skip
    if crossed(before, state.step, tr.log_every):
        run.progress.beat()
    stop_if_diverged(tr, state, run.run_dir, run.logger)
    if tr.max_time_minutes and dist.any(time.perf_counter() - started > 60 * tr.max_time_minutes):
        log.info("trainer.max_time_minutes reached at step %d", state.step)
        return False
    if state.step < tr.max_steps and crossed(before, state.step, tr.eval_every):
        run.evaluate(state)
    if state.step < tr.max_steps and crossed(before, state.step, tr.save_every):
        run.save(state)
    return True


def interrupted(run: Session, signum: int | None) -> None:
    """Save (unless this step's checkpoint exists), close the logs and raise Interrupted
    with the command that continues the run."""
    path = run.save(run.state)
    run.logger.finish({})
    where = f"interrupted at step {run.state.step}, checkpoint {path}"
    # The run's overrides are in the checkpoint: this command alone continues it in place.
    command = f"{program()} train resume={shlex.quote(str(run.run_dir))}"
    # A rank the signal did not reach stops as the scheduler's SIGTERM would have it.
    raise Interrupted(f"{where}; continue with: {command}", where, signum or signal.SIGTERM)


def finish(run: Session) -> dict[str, Any]:
    """The end of a run: the final evaluation and checkpoint, summary.json."""
    cfg, state = run.cfg, run.state
    final_eval = state.last_eval
    if cfg.trainer.eval_every > 0 or math.isnan(final_eval):
        final_eval = run.evaluate(state)
    run.save(state)
    summary = summarize(cfg, state, final_eval, run.logger.metrics_path)
    if run.dist.is_main:
        atomic_write_json(run.run_dir / "summary.json", summary)
    run.logger.finish(summary)
    log.info(
        "done: eval accuracy %.3f (best %.3f), %d steps in %.0f s -> %s",
        final_eval, state.best_eval, state.step, state.wall_time_s, run.run_dir,
    )  # fmt: skip
    return summary
