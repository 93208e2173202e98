"""The inner loop of the TIC-GRPO paper (arXiv 2508.02833): K minibatches of optimizer
steps on one rollout.

`policy_update` takes a scored rollout, computes pi_old's log-probs (and the reference
model's, for a KL term), then one optimizer step per minibatch of whole groups, each
micro-batched, with the algorithm's loss from `tic_grpo_cli.algorithms`. With several
ranks each one holds a share of every minibatch and gradients are averaged.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from tic_grpo_cli.algorithms import (
    compute_policy_loss,
    correction_weights,
    default_aggregation,
    diagnostics,
    kl_penalty,
    mismatch_stats,
)
from tic_grpo_cli.runtime import distributed
from tic_grpo_cli.runtime.distributed import Dist
from tic_grpo_cli.sampling import Generation, completion_logprobs
from tic_grpo_cli.train.rollout import Rollout


def merge_stats(total: dict[str, float], stats: dict[str, float], weight: float) -> None:
    """Fold one micro-batch's stats in: extremes stay extremes, the rest are weighted means."""
    for key, value in stats.items():
        if key.endswith("_max"):
            total[key] = max(total.get(key, -math.inf), value)
        elif key.endswith("_min"):
            total[key] = min(total.get(key, math.inf), value)
        else:
            total[key] = total.get(key, 0.0) + value * weight


def rows_in_chunks(rows: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(rows.split(size)) if len(rows) else []


def group_rows(prompt_batches: tuple[torch.Tensor, ...], group: int) -> list[torch.Tensor]:
    """Rollout rows of each batch of prompt indices: prompt p owns rows p*G .. p*G+G-1."""
    return [(p[:, None] * group + torch.arange(group)).reshape(-1) for p in prompt_batches]


def batch_logprobs(
    model, gen: Generation, rows: torch.Tensor, micro: int | None, amp: bool = False
) -> torch.Tensor:
    """Log-probs of the rollout's completions `rows` under `model`, micro-batched, at the
    temperature they were sampled at (so pi_theta is the distribution that sampled)."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        return completion_logprobs(
            model,
            gen.prompt_ids[rows].to(device),
            gen.prompt_mask[rows].to(device),
            gen.completion_ids[rows].to(device),
            gen.completion_mask[rows].to(device),
            micro_batch_size=micro,
            temperature=gen.temperature,
        ).float()


def policy_update(
    model,
    frozen,
    ref_model,
    optimizer,
    scheduler,
    rollout: Rollout,
    cfg: DictConfig,
    generator: torch.Generator,
    dist: Dist = distributed.SINGLE,
) -> list[dict[str, float]]:
    """The inner loop: K minibatches x ppo_epochs optimizer steps on one rollout.

    With several ranks, `rollout` is this rank's share of the batch and each minibatch is
    its share of the global one; the rows returned hold global values on every rank.
    Returns one metrics row per optimizer step (not yet logged)."""
    tr, alg = cfg.trainer, cfg.algorithm
    gen, group = rollout.gen, tr.group_size
    device = next(model.parameters()).device
    amp = cfg.hardware.mixed_precision == "bf16"
    mask = gen.completion_mask.to(device)
    advantages = rollout.advantages.to(device)
    everything = torch.arange(len(advantages))
    aggregation = alg.aggregation or default_aggregation(alg.name)
    by_tokens = aggregation == "token_mean"

    prompts = len(advantages) // group
    minibatch = dist.share(tr.minibatch_size, "trainer.minibatch_size")
    first_epoch = group_rows(torch.arange(prompts).split(minibatch), group)
    # pi_old's log-probs in the training pass's numerics: the no-grad forward runs on exactly
    # the chunks the training forward will see, so every ratio is exactly 1 before the first
    # update. The first minibatch needs no such pass: its training forward, taken before any
    # update, yields the same numbers, and fills them in below (1/K of the pass saved).
    from_sampler = tr.old_logprobs == "sampler"
    sampler_logprobs = gen.logprobs.to(device)
    trainer_old = torch.zeros(mask.shape, device=device)
    # Recomputing, pi_old is the trainer's (the same tensor, filled in place); otherwise the
    # sampler's, and trainer_old only serves to measure the mismatch.
    old_logprobs = sampler_logprobs if from_sampler else trainer_old
    with torch.no_grad():
        if not from_sampler:
            for rows in first_epoch[1:]:
                for chunk in rows_in_chunks(rows, tr.micro_batch_size):
                    old_logprobs[chunk] = batch_logprobs(model, gen, chunk, None, amp)
        ref_logprobs = None
        if ref_model is not None:
            ref_logprobs = torch.cat(
                [
                    batch_logprobs(ref_model, gen, c, tr.micro_batch_size, amp)
                    for c in rows_in_chunks(everything, tr.micro_batch_size)
                ]
            )

    # grpo_no_is: each minibatch's gradient is taken at theta_old, through a frozen copy.
    grad_model = model
    if frozen is not None:
        frozen.load_state_dict(model.state_dict())
        grad_model = frozen

    rows_out = []
    for epoch in range(tr.ppo_epochs):
        # Whole groups stay together; the order of minibatches is reshuffled each epoch.
        minibatches = first_epoch
        if epoch:
            order = torch.randperm(prompts, generator=generator).split(minibatch)
            minibatches = group_rows(order, group)
        for k, rows in enumerate(minibatches):
            total = mask[rows].sum().item() if by_tokens else len(rows)
            # The mean of the ranks' totals: once gradients are averaged over ranks, every
            # sequence (token) of the global minibatch then weighs the same, as in one process.
            total = dist.average(total)
            optimizer.zero_grad(set_to_none=True)
            stats_sum: dict[str, float] = {}
            moments: dict[str, float] = {}
            loss_sum = 0.0
            for chunk in rows_in_chunks(rows, tr.micro_batch_size):
                logprobs = batch_logprobs(grad_model, gen, chunk, None, amp)
                if k == 0 and epoch == 0:
                    # The trainer's log-probs at theta_old: pi_old itself when recomputing.
                    trainer_old[chunk] = logprobs.detach()
                correction = correction_weights(
                    alg.rollout_correction,
                    old_logprobs[chunk],
                    sampler_logprobs[chunk],
                    mask[chunk],
                    alg.rollout_correction_c,
                )
                loss, stats = compute_policy_loss(
                    alg.name,
                    logprobs,
                    old_logprobs[chunk],
                    advantages[chunk],
                    mask[chunk],
                    epsilon_low=alg.epsilon_low,
                    epsilon_high=alg.epsilon_high,
                    max_completion_length=tr.max_completion_length,
                    aggregation=alg.aggregation,
                    correction=correction,
                )
                if ref_logprobs is not None:
                    kl = kl_penalty(logprobs, ref_logprobs[chunk], mask[chunk], alg.kl_estimator)
                    loss = loss + alg.kl_coef * kl
                    stats["kl"] = kl.item()
                # Micro-batch losses are means; weight them so their sum is the minibatch mean.
                weight = (mask[chunk].sum().item() if by_tokens else len(chunk)) / max(total, 1)
                (loss * weight).backward()
                loss_sum += loss.item() * weight
                merge_stats(stats_sum, stats, weight)
                merge_stats(
                    moments,
                    diagnostics.ratio_moments(
                        logprobs, old_logprobs[chunk], mask[chunk], alg.epsilon_high
                    ),
                    len(chunk) / len(rows),
                )
            if frozen is not None:
                for live, fixed in zip(model.parameters(), frozen.parameters(), strict=True):
                    live.grad = None if fixed.grad is None else fixed.grad.detach().clone()
                frozen.zero_grad(set_to_none=True)
            params = [p for p in model.parameters() if p.requires_grad]
            # From here on every rank holds the global gradient, loss and stats, so all of
            # them clip, step or skip alike.
            dist.average_gradients(params)
            loss_sum, stats_sum = dist.average(loss_sum), dist.average_stats(stats_sum)
            moments = dist.average_stats(moments)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tr.max_grad_norm or float("inf"))
            finite = math.isfinite(loss_sum) and bool(torch.isfinite(grad_norm))
            if finite:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            row = {
                "epoch": epoch,
                "minibatch": k,
                "loss": loss_sum,
                "grad_norm": grad_norm.item(),
                "lr": scheduler.get_last_lr()[0],
                "nonfinite": not finite,
                "clip_fraction": stats_sum.get("clip_fraction", 0.0),
                "ratio/mean": stats_sum.get("ratio_mean", 1.0),
                "ratio/max": stats_sum.get("ratio_max", 1.0),
            }
            row.update(
                {
                    f"stats/{k_}": v
                    for k_, v in stats_sum.items()
                    if k_ not in ("clip_fraction", "ratio_mean", "ratio_max")
                }
            )
            row.update({f"ratio_diag/{k_}": v for k_, v in diagnostics.finish(moments).items()})
            rows_out.append(row)
    rows_out[0].update(_mismatch_row(trainer_old, sampler_logprobs, mask, first_epoch, cfg, dist))
    return rows_out


def _mismatch_row(
    trainer_old: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    first_epoch: list[torch.Tensor],
    cfg: DictConfig,
    dist: Dist,
) -> dict[str, float]:
    """mismatch/*: the trainer's log-probs at theta_old against the sampler's, over the whole
    rollout (over the first minibatch only with trainer.old_logprobs=sampler: no other
    minibatch gets a forward at theta_old)."""
    rows = torch.cat(first_epoch) if cfg.trainer.old_logprobs == "recompute" else first_epoch[0]
    alg = cfg.algorithm
    stats = mismatch_stats(
        trainer_old[rows],
        sampler_logprobs[rows],
        mask[rows],
        alg.rollout_correction,
        alg.rollout_correction_c,
    )
    return {
        f"mismatch/{key}": dist.max(value) if key.endswith("_max") else dist.average(value)
        for key, value in stats.items()
    }
