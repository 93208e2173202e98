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

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from tic_grpo_cli.config.resume_argv import overrides_file
from tic_grpo_cli.config.validation import validate_train
from tic_grpo_cli.data import Examples, Task, build_task
from tic_grpo_cli.data.lengths import check_prompts, completion_limit
from tic_grpo_cli.errors import Interrupted, program
from tic_grpo_cli.models import (
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from tic_grpo_cli.runs import run_dir as run_dirs
from tic_grpo_cli.runs.files import atomic_write_json
from tic_grpo_cli.runs.policy_checkpoint import save_checkpoint
from tic_grpo_cli.runtime import launch
from tic_grpo_cli.runtime.distributed import Dist
from tic_grpo_cli.runtime.memory import free_memory_for
from tic_grpo_cli.runtime.threads import CpuThreads
from tic_grpo_cli.train.periodic_eval import TrainEval
from tic_grpo_cli.train.policy import Policy, load_policy, policy_model_config
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
    free_memory_for(policy.model, device)  # a large model's RSS follows its live tensors
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
    saved: dict[int, Path] = {}  # step -> its checkpoint: a step is saved at most once

    def checkpoint() -> Path:
        if state.step not in saved:
            saved[state.step] = save(cfg, run_dir, dist, policy, state, sampler, generator, queue)
        return saved[state.step]

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
            tokens, metrics = report(logger, state, rollout, step_rows, timing, cfg, dist.is_main)
            state.tokens += tokens
            if (warning := signals(metrics)) and dist.is_main:
                log.warning(warning)
            progress.update(state.step, reward=metrics["reward/mean"],
                            eval_accuracy=state.last_eval,
                            tokens_per_s=metrics["throughput/tokens_per_s"])  # fmt: skip
            if crossed(before, state.step, tr.log_every):
                progress.beat()
            stop_if_diverged(tr, state, run_dir, logger)
            elapsed = time.perf_counter() - started
            if tr.max_time_minutes and dist.any(elapsed > 60 * tr.max_time_minutes):
                log.info("trainer.max_time_minutes reached at step %d", state.step)
                break
            if state.step < tr.max_steps and crossed(before, state.step, tr.eval_every):
                evaluate(state)
            if state.step < tr.max_steps and crossed(before, state.step, tr.save_every):
                checkpoint()

    if dist.any(stop.signal is not None):
        path = checkpoint()  # the save_every one, if the signal came on such a step
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
    checkpoint()
    summary = summarize(cfg, state, final_eval, logger.metrics_path)
    if dist.is_main:
        atomic_write_json(run_dir / "summary.json", summary)
    logger.finish(summary)
    log.info(
        "done: eval accuracy %.3f (best %.3f), %d steps in %.0f s -> %s",
        final_eval, state.best_eval, state.step, state.wall_time_s, run_dir,
    )  # fmt: skip
    return summary
