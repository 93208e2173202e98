"""`tic-grpo train`: the RL loop of PAPER.md, top to bottom.

    repeat: sample N prompts x G completions from pi_old := pi_theta  (rollout)
            score them, group-normalise rewards into advantages
            split into K = N / minibatch_size minibatches, one optimizer step each (inner loop)
            evaluate / checkpoint at rollout boundaries

`train(cfg, run_dir) -> summary` is a pure function of its config (plus the run dir it
writes); the Hydra entry point in cli.py only wraps it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import random
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, read_write

from tic_grpo_cli import checkpoint as ckpt
from tic_grpo_cli import distributed, observe
from tic_grpo_cli.algorithms import (
    group_advantages,
)
from tic_grpo_cli.data import build_task
from tic_grpo_cli.distributed import Dist
from tic_grpo_cli.errors import Interrupted, UserError
from tic_grpo_cli.eval_model import evaluate_model
from tic_grpo_cli.models import load_model_and_tokenizer, resolve_device, resolve_dtype
from tic_grpo_cli.rollout import Generation, Rollout, generate
from tic_grpo_cli.threads import CpuThreads
from tic_grpo_cli.update import policy_update
from tic_grpo_cli.validation import validate_train

log = logging.getLogger("tic_grpo")


class TrainingStopped(UserError):
    """The run stopped on purpose (signal, repeated non-finite updates); work is saved."""


class PromptSampler:
    """Walks the train split in a seeded shuffled order, epoch after epoch; its position is
    part of the checkpoint so a resumed run sees the same prompts."""

    def __init__(self, size: int, seed: int, epoch: int = 0, position: int = 0):
        if size == 0:
            raise UserError("the train split is empty: nothing to train on")
        self.size, self.seed, self.epoch, self.position = size, seed, epoch, position

    def _order(self) -> list[int]:
        order = list(range(self.size))
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            order = self._order()
            chunk = order[self.position : self.position + n - len(out)]
            out += chunk
            self.position += len(chunk)
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


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
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "sampler": generator.get_state(),
    }


def rollout_seed(seed: int, rollout: int, rank: int) -> int:
    """The sampling seed of one rollout on one rank. A function of the position alone, so a
    resumed run samples what the uninterrupted one would have (on any number of ranks, with
    no per-rank generator state to save), and ranks draw independent noise."""
    digest = hashlib.sha256(f"{seed}:{rollout}:{rank}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy[0], np.array(numpy[1], dtype=np.uint32), *numpy[2:]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])


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


def collect_rollout(
    model, tokenizer, task, examples, cfg: DictConfig, generator, dist: Dist = distributed.SINGLE
) -> Rollout:
    """Sample G completions per prompt from the current policy, score, and compute advantages."""
    tr, alg = cfg.trainer, cfg.algorithm
    group = tr.group_size
    repeated = [ex for ex in examples for _ in range(group)]
    model.eval()
    device_type = next(model.parameters()).device.type
    with torch.autocast(
        device_type, torch.bfloat16, enabled=cfg.hardware.mixed_precision == "bf16"
    ):
        gen = generate(
            model,
            tokenizer,
            [ex["prompt"] for ex in repeated],
            tr.max_completion_length,
            temperature=tr.temperature,
            top_p=tr.top_p,
            top_k=tr.top_k,
            generator=generator,
            batch_size=tr.generation_batch_size,
        )
    model.train()
    scored = task.score(gen.texts, repeated)
    rewards = torch.tensor(scored.rewards, dtype=torch.float32)
    lengths = gen.completion_mask.sum(-1).float().clamp(min=1).cpu()
    all_rewards, all_lengths, mine = rewards, lengths, slice(None)
    if alg.batch_std and dist.active:  # the std of the whole batch, which the ranks share out
        all_rewards, all_lengths = (torch.cat(t) for t in zip(
            *dist.all_gather_object((rewards, lengths)), strict=True))  # fmt: skip
        mine = slice(dist.rank * len(rewards), (dist.rank + 1) * len(rewards))
    advantages = group_advantages(
        all_rewards.view(-1, group),
        normalize_std=alg.normalize_std,
        batch_std=alg.batch_std,
        lengths=all_lengths.view(-1, group) if alg.length_corrected_advantage else None,
    ).reshape(-1)[mine]
    return Rollout(
        gen,
        repeated,
        rewards,
        advantages,
        torch.tensor(scored.correct, dtype=torch.bool),
        scored.terms,
    )


def gather_rollout(rollout: Rollout, dist: Dist, group: int) -> Rollout:
    """Every rank's share as one batch in global prompt order (rank r sampled prompts r,
    r + W, r + 2W, ...), for metrics and samples. It carries what those read (examples,
    texts, completion masks, rewards); token ids and log-probs stay on their rank (empty)."""
    if not dist.active:
        return rollout
    gen = rollout.gen
    parts = dist.all_gather_object((
        rollout.examples, gen.texts, gen.completion_mask.cpu(), gen.finished.cpu(),
        rollout.rewards, rollout.advantages, rollout.correct, rollout.terms,
    ))  # fmt: skip
    examples, texts, masks, finished, rewards, advantages, correct, terms = zip(*parts, strict=True)
    per_rank = len(rollout.rewards)
    # Row g of global prompt p is row (p // W) * G + g of rank p % W's share.
    order = [
        (p % dist.world_size) * per_rank + (p // dist.world_size) * group + g
        for p in range(dist.world_size * per_rank // group)
        for g in range(group)
    ]

    def rows(values: tuple[list, ...]) -> list:
        flat = [row for value in values for row in value]
        return [flat[i] for i in order]

    def stack(values: tuple[torch.Tensor, ...]) -> torch.Tensor:
        width = max(v.shape[-1] for v in values)  # completion masks differ in width by rank
        return torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[-1])) if v.dim() == 2
                          else v for v in values])[order]  # fmt: skip

    mask = stack(masks)
    empty = mask[:, :0]
    merged = Generation(empty.long(), empty, empty.long(), mask, empty.float(), rows(texts),
                        stack(finished))  # fmt: skip
    return Rollout(
        merged,
        rows(examples),
        stack(rewards),
        stack(advantages),
        stack(correct),
        {name: rows(tuple(t[name] for t in terms)) for name in terms[0]},
    )


def rollout_metrics(rollout: Rollout, group: int) -> dict[str, float]:
    rewards = rollout.rewards.view(-1, group)
    lengths = rollout.gen.completion_mask.sum(-1).float()
    out = {
        "reward/mean": rollout.rewards.mean().item(),
        "reward/std": rollout.rewards.std().item() if len(rollout.rewards) > 1 else 0.0,
        "accuracy": rollout.correct.float().mean().item(),
        "completion_length/mean": lengths.mean().item(),
        "completion_length/max": lengths.max().item(),
        "truncated_fraction": 1.0 - rollout.gen.finished.float().mean().item(),
        "frac_zero_std_groups": (rewards.std(-1) == 0).float().mean().item(),
        "advantage/abs_mean": rollout.advantages.abs().mean().item(),
    }
    for name, values in rollout.terms.items():
        out[f"reward/{name}"] = float(np.mean(values)) if values else 0.0
    return out


def pick_samples(rollout: Rollout, count: int = 4) -> list[dict[str, Any]]:
    picks = range(0, len(rollout.examples), max(1, len(rollout.examples) // count))
    return [
        {
            "prompt": rollout.examples[i]["prompt"],
            "answer": str(rollout.examples[i]["answer"]),
            "completion": rollout.gen.texts[i],
            "reward": rollout.rewards[i].item(),
            "advantage": rollout.advantages[i].item(),
        }
        for i in list(picks)[:count]
    ]


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and after // every > before // every


def _resume_source(cfg: DictConfig, run_dir: Path) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        found = ckpt.list_checkpoints(run_dir)
        return ckpt.resolve_checkpoint(run_dir) if found else None
    return ckpt.resolve_checkpoint(cfg.resume)


def _check_compatible(saved: dict[str, Any], cfg: DictConfig, source: Path) -> None:
    saved_cfg = saved.get("config", {})
    for key in ("model.name_or_path", "algorithm.name"):
        group, field = key.split(".")
        before = saved_cfg.get(group, {}).get(field)
        now = cfg[group][field]
        if before is not None and before != now:
            raise UserError(
                f"{key}={now!r} does not match the checkpoint {source} ({before!r}); "
                f"resume with {key}={before}"
            )


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run RL fine-tuning as configured; write the run dir; return the final metrics."""
    validate_train(cfg)
    tr, alg, hw = cfg.trainer, cfg.algorithm, cfg.hardware
    # One process per device under hardware=ddp|fsdp (distributed.py); ranks started by
    # torchrun each got a run dir from Hydra's clock, and rank 0's is the one to share.
    dist = distributed.setup(hw)
    run_dir = Path(dist.broadcast_object(str(run_dir)))
    run_dir.mkdir(parents=True, exist_ok=True)
    dist.share(tr.minibatch_size, "trainer.minibatch_size")  # fails before anything loads
    device = resolve_device(hw)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", hw.nproc_per_node))
    threads = CpuThreads(hw.num_threads, share=local_ranks)
    threads.start()
    seed_everything(cfg.seed)
    dtype = resolve_dtype(cfg.model, hw, device)

    resume_from = _resume_source(cfg, run_dir)
    saved = ckpt.load_trainer_state(resume_from) if resume_from else None
    if saved:
        _check_compatible(saved, cfg, resume_from)
    model_cfg = copy.deepcopy(cfg.model)
    if resume_from:
        with read_write(model_cfg):
            model_cfg.name_or_path = str(resume_from)
            model_cfg.gguf_file = model_cfg.gguf_package = None
    model, tokenizer = load_model_and_tokenizer(
        model_cfg, device, dist.storage_dtype(dtype), hw.mixed_precision
    )
    task = build_task(cfg.dataset, tokenizer)
    train_split = task.split("train")
    frozen = copy.deepcopy(model) if alg.name == "grpo_no_is" else None
    ref_model = None
    if alg.kl_coef > 0:
        ref_model, _ = load_model_and_tokenizer(
            cfg.model, device, dist.storage_dtype(dtype), hw.mixed_precision
        )
        ref_model.eval().requires_grad_(False)
    model, frozen, ref_model = (dist.wrap(m, dtype) for m in (model, frozen, ref_model))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=tr.lr, weight_decay=tr.weight_decay, betas=(tr.adam_beta1, tr.adam_beta2)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tr))
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    sampler = PromptSampler(len(train_split), cfg.seed)
    step, rollouts, nonfinite_total, nonfinite_streak, wandb_id = 0, 0, 0, 0, None
    best_eval, last_eval = float("nan"), float("nan")
    if saved:
        dist.load_optimizer(model, optimizer, saved, resume_from)
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], generator)
        sampler = PromptSampler(len(train_split), cfg.seed, **saved["sampler"])
        step, rollouts = saved["step"], saved["rollouts"]
        nonfinite_total = saved.get("nonfinite_total", 0)
        best_eval, last_eval = saved.get("best_eval", best_eval), saved.get("last_eval", last_eval)
        wandb_id = saved.get("wandb_id")

    config = OmegaConf.to_container(cfg, resolve=True)
    # Only rank 0 writes metrics and samples and talks to W&B.
    logger = observe.RunLogger(run_dir, cfg.wandb, config, wandb_id, enabled=dist.is_main)
    if saved:
        logger.truncate_after(step)
        log.info("resumed from %s at step %d", resume_from, step)
    else:
        logger.set_aside_earlier_run()
    k_minibatches = tr.rollout_batch_size // tr.minibatch_size
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s (%.2fM params, %s on %s) | algorithm %s | batch %d prompts x %d "
        "completions, K=%d minibatches x %d epoch(s) | %d steps | run dir %s",
        cfg.model.name_or_path,
        n_params / 1e6,
        str(dtype).removeprefix("torch."),
        device,
        alg.name,
        tr.rollout_batch_size,
        tr.group_size,
        k_minibatches,
        tr.ppo_epochs,
        tr.max_steps,
        run_dir,
    )

    def run_eval() -> float:
        nonlocal best_eval, last_eval
        # Rank 0 evaluates (on the whole model) while the other ranks wait for its result.
        metrics = None
        amp = hw.mixed_precision == "bf16"
        with dist.full_params(model), torch.autocast(device.type, torch.bfloat16, enabled=amp):
            if dist.is_main:
                metrics, _ = evaluate_model(
                    model,
                    tokenizer,
                    task,
                    split="test",
                    limit=tr.eval_limit,
                    max_new_tokens=tr.max_completion_length,
                    batch_size=tr.eval_batch_size,
                    seed=cfg.seed,
                )
        metrics = dist.broadcast_object(metrics)
        model.train()
        last_eval = metrics["accuracy"]
        best_eval = last_eval if math.isnan(best_eval) else max(best_eval, last_eval)
        logger.log({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        log.info("eval at step %d: accuracy %.3f (best %.3f)", step, last_eval, best_eval)
        if dist.is_main:
            observe.plot_curves(logger.metrics_path, run_dir / "curves.png")
        return last_eval

    def save() -> Path:
        state = {
            "step": step,
            "rollouts": rollouts,
            "sampler": sampler.state(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(generator),
            "nonfinite_total": nonfinite_total,
            "best_eval": best_eval,
            "last_eval": last_eval,
            "wandb_id": logger.wandb_id,
            "config": config,
        }
        # Rank 0 writes; the optimizer state is added there (FSDP: saved sharded by every rank).
        path = dist.save_checkpoint(
            run_dir, step, model, tokenizer, optimizer, state, keep_last=tr.keep_last
        )
        log.info("checkpoint saved: %s", path)
        return path

    started = time.perf_counter()
    tokens_total = 0
    stop = StopFlag()
    if step == 0 and tr.eval_every > 0:
        run_eval()
    with stop.installed():
        # A signal may reach only some ranks (e.g. a scheduler's SIGTERM): all stop together.
        while step < tr.max_steps and not dist.any(stop.signal is not None):
            t0 = time.perf_counter()
            generator.manual_seed(rollout_seed(cfg.seed, rollouts, dist.rank))
            # Every rank draws the same global batch and keeps prompts rank, rank + W, ...:
            # the prompts trained on do not depend on the number of ranks.
            chosen = sampler.take(tr.rollout_batch_size)[dist.rank :: dist.world_size]
            examples = [train_split[i] for i in chosen]
            with dist.full_params(model):
                rollout = collect_rollout(model, tokenizer, task, examples, cfg, generator, dist)
            t1 = time.perf_counter()
            step_rows = policy_update(
                model, frozen, ref_model, optimizer, scheduler, rollout, cfg, generator, dist
            )
            t2 = time.perf_counter()
            rollouts += 1
            cpu_threads = threads.adjust()
            # Metrics and samples describe the whole batch, whatever the number of ranks.
            rollout = gather_rollout(rollout, dist, tr.group_size)
            tokens = int(rollout.gen.completion_mask.sum())
            tokens_total += tokens
            shared = {
                **rollout_metrics(rollout, tr.group_size),
                "rollout": rollouts,
                "epoch": sampler.epoch,
                "time/rollout_s": t1 - t0,
                "time/update_s": t2 - t1,
                "throughput/tokens_per_s": tokens / max(t2 - t0, 1e-9),
                "throughput/cpu_threads": cpu_threads,
            }
            before = step
            for row in step_rows:
                step += 1
                nonfinite_streak = nonfinite_streak + 1 if row["nonfinite"] else 0
                nonfinite_total += row["nonfinite"]
                logger.log({"step": step, **shared, **row, "nonfinite_total": nonfinite_total})
                if step >= tr.max_steps:
                    break
            if tr.log_every and _crossed(before, step, tr.log_every):
                log.info(observe.format_row({"step": step, **shared, **step_rows[-1]}))
            samples_due = tr.log_samples_every and _crossed(before, step, tr.log_samples_every)
            if samples_due and dist.is_main:
                samples = pick_samples(rollout)
                logger.log_samples(step, samples)
                observe.print_samples(samples, step)
            if nonfinite_streak >= tr.max_nonfinite_steps:
                last = ckpt.list_checkpoints(run_dir)
                where = f"; last good checkpoint: {last[-1][1]}" if last else ""
                logger.finish({})
                raise TrainingStopped(
                    f"stopped after {nonfinite_streak} non-finite updates in a "
                    f"row (trainer.max_nonfinite_steps={tr.max_nonfinite_steps})"
                    f"{where}; lower trainer.lr or check the reward"
                )
            elapsed = time.perf_counter() - started
            if tr.max_time_minutes and dist.any(elapsed > 60 * tr.max_time_minutes):
                log.info("trainer.max_time_minutes reached at step %d", step)
                break
            if step < tr.max_steps and _crossed(before, step, tr.eval_every):
                run_eval()
            if step < tr.max_steps and _crossed(before, step, tr.save_every):
                save()

    if dist.any(stop.signal is not None):
        path = save()
        logger.finish({})
        raise Interrupted(
            f"interrupted at step {step}; checkpoint {path}; continue with "
            f"`tic-grpo train resume={run_dir}` (plus the same overrides)"
        )
    final_eval = run_eval() if tr.eval_every > 0 or math.isnan(last_eval) else last_eval
    save()
    wall = time.perf_counter() - started
    rows = observe.read_jsonl(logger.metrics_path)
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
    summary = {
        "final/eval_accuracy": final_eval,
        "best/eval_accuracy": best_eval,
        "final/reward": float(np.mean(rewards[-k_minibatches:])) if rewards else float("nan"),
        "steps": step,
        "rollouts": rollouts,
        "wall_time_s": wall,
        "throughput/tokens_per_s": tokens_total / max(wall, 1e-9),
        "nonfinite_total": nonfinite_total,
        "algorithm": alg.name,
        "seed": cfg.seed,
    }
    if dist.is_main:
        ckpt.atomic_write_json(run_dir / "summary.json", summary)
    logger.finish(summary)
    log.info(
        "done: eval accuracy %.3f (best %.3f), %d steps in %.0f s -> %s",
        final_eval,
        best_eval,
        step,
        wall,
        run_dir,
    )
    return summary
