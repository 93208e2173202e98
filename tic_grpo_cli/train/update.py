"""The inner loop of the TIC-GRPO paper (arXiv 2508.02833): K minibatches of optimizer
steps on one rollout.

`policy_update` takes a scored rollout, computes the log-probs the loss compares against
(`Anchors`: the behaviour policy mu that sampled it, the proximal policy at the start of
this update, the reference model for a KL term), then takes one optimizer step per
minibatch of whole groups (`minibatch_step`), each micro-batched, with the algorithm's loss
from `tic_grpo_cli.algorithms`. With several ranks each one holds a share of every minibatch
and gradients are averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor

from tic_grpo_cli.algorithms import (
    compute_policy_loss,
    correction_weights,
    default_aggregation,
    diagnostics,
    kl_penalty,
    mismatch_stats,
)
from tic_grpo_cli.logprobs import completion_logprobs
from tic_grpo_cli.runtime import distributed
from tic_grpo_cli.runtime.distributed import Dist, reduction
from tic_grpo_cli.sampling import Generation
from tic_grpo_cli.train.policy import Policy
from tic_grpo_cli.train.rollout import Rollout

# Algorithm stats shown under their own names; the rest are logged as stats/<name>.
_NAMED_STATS = {"clip_fraction": "clip_fraction", "ratio_mean": "ratio/mean",
                "ratio_max": "ratio/max"}  # fmt: skip


def merge_stats(total: dict[str, float], stats: dict[str, float], weight: float) -> None:
    """Fold one micro-batch's stats in, each by its key's `reduction`: extremes stay
    extremes, the rest are weighted means."""
    for key, value in stats.items():
        how = reduction(key)
        if how == "max":
            total[key] = max(total.get(key, -math.inf), value)
        elif how == "min":
            total[key] = min(total.get(key, math.inf), value)
        else:
            total[key] = total.get(key, 0.0) + value * weight


def rows_in_chunks(rows: Tensor, size: int) -> list[Tensor]:
    return list(rows.split(size)) if len(rows) else []


def group_rows(prompt_batches: tuple[Tensor, ...], group: int) -> list[Tensor]:
    """Rollout rows of each batch of prompt indices: prompt p owns rows p*G .. p*G+G-1."""
    return [(p[:, None] * group + torch.arange(group)).reshape(-1) for p in prompt_batches]


def batch_logprobs(
    model, gen: Generation, rows: Tensor, micro: int | None, amp: bool = False
) -> Tensor:
    """Log-probs [len(rows), L] of the rollout's completions `rows` under `model`,
    micro-batched, at the temperature they were sampled at (so pi_theta is the distribution
    that sampled)."""
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


@dataclass
class Anchors:
    """The log-probs [B, L] of one rollout's completions that pi_theta is compared with.

    `behaviour` is mu, the policy that sampled the rollout (its log-probs recorded at
    generation, in the sampler's numerics; with `trainer.staleness` > 0, a policy several
    updates old). `proximal` is the policy at the start of this update in the trainer's
    numerics; the first minibatch's rows are filled by `fill_proximal` from its own training
    forward, taken before any step, which yields the same numbers as a separate pass.
    `from_sampler` (`trainer.old_logprobs=sampler`) makes mu the ratio's anchor, else the
    proximal policy is (and `algorithm.rollout_correction` may weight by proximal / mu).
    """

    behaviour: Tensor
    proximal: Tensor
    reference: Tensor | None
    from_sampler: bool

    def old(self, rows: Tensor) -> Tensor:
        """pi_old of the ratio r = pi_theta / pi_old for `rows`."""
        return self.behaviour[rows] if self.from_sampler else self.proximal[rows]

    def fill_proximal(self, rows: Tensor, logprobs: Tensor) -> None:
        self.proximal[rows] = logprobs.detach()


@torch.no_grad()
def compute_anchors(
    policy: Policy, gen: Generation, first_epoch: list[Tensor], cfg: DictConfig, amp: bool
) -> Anchors:
    """The behaviour log-probs, the proximal ones of minibatches 2..K (recomputed in the
    training pass's numerics: the no-grad forward runs on exactly the chunks the training
    forward will see, so every ratio is exactly 1 before the first update) and the reference
    model's, if any. Minibatch 1 needs no such pass (`Anchors.fill_proximal`)."""
    tr = cfg.trainer
    device = next(policy.model.parameters()).device
    behaviour = gen.logprobs.to(device)
    proximal = torch.zeros(behaviour.shape, device=device)
    from_sampler = tr.old_logprobs == "sampler"
    if not from_sampler:
        for rows in first_epoch[1:]:
            for chunk in rows_in_chunks(rows, tr.micro_batch_size):
                proximal[chunk] = batch_logprobs(policy.model, gen, chunk, None, amp)
    reference = None
    if policy.ref_model is not None:
        everything = torch.arange(len(behaviour))
        reference = torch.cat([
            batch_logprobs(policy.ref_model, gen, c, tr.micro_batch_size, amp)
            for c in rows_in_chunks(everything, tr.micro_batch_size)
        ])  # fmt: skip
    return Anchors(behaviour, proximal, reference, from_sampler)


def micro_batch_loss(
    logprobs: Tensor, anchors: Anchors, advantages: Tensor, mask: Tensor, chunk: Tensor,
    cfg: DictConfig,
) -> tuple[Tensor, dict[str, float]]:  # fmt: skip
    """The algorithm's loss on one micro-batch (a mean over its rows or tokens), plus the
    KL term if configured; and its stats."""
    alg = cfg.algorithm
    old = anchors.old(chunk)
    correction = correction_weights(
        alg.rollout_correction, old, anchors.behaviour[chunk], mask[chunk],
        alg.rollout_correction_c,
    )  # fmt: skip
    loss, stats = compute_policy_loss(
        alg.name, logprobs, old, advantages[chunk], mask[chunk],
        epsilon_low=alg.epsilon_low, epsilon_high=alg.epsilon_high,
        max_completion_length=cfg.trainer.max_completion_length,
        aggregation=alg.aggregation, correction=correction,
    )  # fmt: skip
    if anchors.reference is not None:
        kl = kl_penalty(logprobs, anchors.reference[chunk], mask[chunk], alg.kl_estimator)
        loss = loss + alg.kl_coef * kl
        stats["kl"] = kl.item()
    return loss, stats


def minibatch_step(
    policy: Policy, rows: Tensor, anchors: Anchors, rollout: Rollout, cfg: DictConfig,
    dist: Dist, fill_proximal: bool, behaviour_stats: bool,
) -> dict[str, float]:  # fmt: skip
    """One optimizer step on the rollout's `rows` (one minibatch of whole groups), its
    gradient accumulated over micro-batches. Returns the step's metrics row (global values
    on every rank). A non-finite loss or gradient skips the step (counted by the loop)."""
    tr, alg = cfg.trainer, cfg.algorithm
    amp = cfg.hardware.mixed_precision == "bf16"
    device = anchors.behaviour.device
    mask, advantages = rollout.gen.completion_mask.to(device), rollout.advantages.to(device)
    by_tokens = (alg.aggregation or default_aggregation(alg.name)) == "token_mean"
    # The mean of the ranks' totals: once gradients are averaged over ranks, every
    # sequence (token) of the global minibatch then weighs the same, as in one process.
    total = dist.average(mask[rows].sum().item() if by_tokens else len(rows))
    # grpo_no_is: the gradient is taken at theta_old, through the frozen copy.
    grad_model = policy.frozen if policy.frozen is not None else policy.model
    policy.optimizer.zero_grad(set_to_none=True)
    stats: dict[str, float] = {}
    moments: dict[str, float] = {}
    towards_mu: dict[str, float] = {}
    loss_sum = 0.0
    for chunk in rows_in_chunks(rows, tr.micro_batch_size):
        logprobs = batch_logprobs(grad_model, rollout.gen, chunk, None, amp)
        if fill_proximal:
            anchors.fill_proximal(chunk, logprobs)
        loss, chunk_stats = micro_batch_loss(logprobs, anchors, advantages, mask, chunk, cfg)
        # Micro-batch losses are means; weight them so their sum is the minibatch mean.
        weight = (mask[chunk].sum().item() if by_tokens else len(chunk)) / max(total, 1)
        (loss * weight).backward()
        loss_sum += loss.item() * weight
        merge_stats(stats, chunk_stats, weight)
        share = len(chunk) / len(rows)
        merge_stats(moments, diagnostics.ratio_moments(
            logprobs, anchors.old(chunk), mask[chunk], alg.epsilon_high), share)  # fmt: skip
        if behaviour_stats and not anchors.from_sampler:  # anchored at mu: `moments` are these
            merge_stats(towards_mu, diagnostics.ratio_moments(
                logprobs, anchors.behaviour[chunk], mask[chunk], alg.epsilon_high), share)  # fmt: skip
    if policy.frozen is not None:
        for live, fixed in zip(policy.model.parameters(), policy.frozen.parameters(), strict=True):
            live.grad = None if fixed.grad is None else fixed.grad.detach().clone()
        policy.frozen.zero_grad(set_to_none=True)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    # From here on every rank holds the global gradient, loss and stats, so all of
    # them clip, step or skip alike.
    dist.average_gradients(params)
    loss_sum = dist.average(loss_sum)
    stats, moments = dist.average_stats(stats), dist.average_stats(moments)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, tr.max_grad_norm or float("inf"))
    finite = math.isfinite(loss_sum) and bool(torch.isfinite(grad_norm))
    if finite:
        policy.optimizer.step()
    policy.optimizer.zero_grad(set_to_none=True)
    policy.scheduler.step()
    row = {
        "loss": loss_sum,
        "grad_norm": grad_norm.item(),
        "lr": policy.scheduler.get_last_lr()[0],
        "nonfinite": not finite,
        "clip_fraction": 0.0,
        "ratio/mean": 1.0,
        "ratio/max": 1.0,
    }
    for key, value in stats.items():
        row[_NAMED_STATS.get(key, f"stats/{key}")] = value
    row.update(prefixed(diagnostics.finish(moments), "ratio_diag/"))
    if behaviour_stats:
        towards_mu = moments if anchors.from_sampler else dist.average_stats(towards_mu)
        row.update(prefixed(behaviour_diagnostics(towards_mu), "behaviour/"))
    return row


def behaviour_diagnostics(moments: dict[str, float]) -> dict[str, float]:
    """pi_theta against the behaviour policy mu: the ratio diagnostics (std of log rho, ESS,
    share past TIC's cap, KL(mu || pi_theta) per completion as `kl`) and the mean log rho."""
    out = diagnostics.finish(moments)
    out["kl"] = out.pop("kl_old")
    return {"log_rho_mean": moments["log_rho_mean"], **out}


def prefixed(stats: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{key}": value for key, value in stats.items()}


def policy_update(
    policy: Policy,
    rollout: Rollout,
    cfg: DictConfig,
    generator: torch.Generator,
    dist: Dist = distributed.SINGLE,
    max_steps: int | None = None,
) -> list[dict[str, float]]:
    """The inner loop: K minibatches x ppo_epochs optimizer steps on one rollout, or the
    first `max_steps` of them (so a run takes exactly `trainer.max_steps` steps).

    With several ranks, `rollout` is this rank's share of the batch and each minibatch is
    its share of the global one; the rows returned hold global values on every rank.
    Returns one metrics row per optimizer step taken (not yet logged); the first carries the
    rollout's `mismatch/*` (proximal against behaviour log-probs)."""
    tr = cfg.trainer
    group = tr.group_size
    amp = cfg.hardware.mixed_precision == "bf16"
    prompts = len(rollout.advantages) // group
    minibatch = dist.share(tr.minibatch_size, "trainer.minibatch_size")
    first_epoch = group_rows(torch.arange(prompts).split(minibatch), group)
    anchors = compute_anchors(policy, rollout.gen, first_epoch, cfg, amp)
    if policy.frozen is not None:
        policy.frozen.load_state_dict(policy.model.state_dict())
    behaviour_stats = tr.staleness > 0
    limit = math.inf if max_steps is None else max_steps
    rows_out: list[dict[str, float]] = []
    for epoch in range(tr.ppo_epochs):
        # Whole groups stay together; the order of minibatches is reshuffled each epoch.
        minibatches = first_epoch
        if epoch:
            order = torch.randperm(prompts, generator=generator).split(minibatch)
            minibatches = group_rows(order, group)
        for k, rows in enumerate(minibatches):
            if len(rows_out) >= limit:
                break
            fill = k == 0 and epoch == 0
            row = minibatch_step(policy, rows, anchors, rollout, cfg, dist, fill, behaviour_stats)
            rows_out.append({"epoch": epoch, "minibatch": k, **row})
    mask = rollout.gen.completion_mask.to(anchors.behaviour.device)
    rows_out[0].update(mismatch_row(anchors, mask, first_epoch, cfg, dist))
    return rows_out


def mismatch_row(
    anchors: Anchors, mask: Tensor, first_epoch: list[Tensor], cfg: DictConfig, dist: Dist
) -> dict[str, float]:
    """mismatch/*: the trainer's log-probs at the start of the update (proximal) against the
    sampler's (behaviour) over the whole rollout (over the first minibatch only with
    trainer.old_logprobs=sampler: no other minibatch gets a forward at the proximal
    weights). Synchronous, this is the sampler-trainer numerical mismatch; with
    trainer.staleness > 0 it adds the drift of the policy since the rollout was sampled."""
    from_sampler = cfg.trainer.old_logprobs == "sampler"
    rows = first_epoch[0] if from_sampler else torch.cat(first_epoch)
    alg = cfg.algorithm
    stats = mismatch_stats(
        anchors.proximal[rows], anchors.behaviour[rows], mask[rows],
        alg.rollout_correction, alg.rollout_correction_c,
    )  # fmt: skip
    return prefixed(dist.average_stats(stats), "mismatch/")
