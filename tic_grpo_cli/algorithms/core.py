"""Shared math for the policy losses: masked reductions, ratios in log space, aggregation,
group advantages and KL estimators. Algorithm modules hold only their objective.

Every objective reduces a completion to one number, its *sequence term*: the sum over the
completion's tokens of the per-token objective (token-level algorithms), or the sequence
objective itself (TIC, Traj_IS), or the sequence objective broadcast to every token (GSPO).
The aggregation then turns the B sequence terms into the minibatch objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# exp(20) ~ 4.9e8. Ratios past this are off-policy noise; capping the log-ratio before exp
# keeps every ratio finite in float32 where an objective has no cap of its own.
LOG_RATIO_MAX = 20.0

SEQ_MEAN_TOKEN_MEAN = "seq_mean_token_mean"
SEQ_MEAN_TOKEN_SUM_NORM = "seq_mean_token_sum_norm"
TOKEN_MEAN = "token_mean"


@dataclass(frozen=True)
class PolicyBatch:
    """A minibatch in the dtype the losses compute in; padding already zeroed."""

    logprobs: Tensor  # [B, L] log pi_theta, 0 on padding, carries grad
    log_ratio: Tensor  # [B, L] log pi_theta - log pi_old, 0 on padding
    advantages: Tensor  # [B]
    mask: Tensor  # [B, L] bool
    lengths: Tensor  # [B] |s_i| as floats


@dataclass(frozen=True)
class Objective:
    """What an algorithm returns: its sequence terms and which ratios it clipped."""

    seq_terms: Tensor  # [B]
    clipped_low: Tensor  # bool, [B, L] for token-level algorithms, [B] for sequence-level
    clipped_high: Tensor
    seq_log_ratio: Tensor | None = None  # [B], set by sequence-level algorithms only


ObjectiveFn = Callable[[PolicyBatch, float, float], Objective]


@dataclass(frozen=True)
class Algorithm:
    name: str
    objective: ObjectiveFn  # (batch, epsilon_low, epsilon_high) -> Objective
    default_aggregation: str


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Summing thousands of bf16 log-ratios loses the signal; never compute below float32.
    return torch.promote_types(dtype, torch.float32)


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    # where, not x * mask: padding may hold inf or NaN and 0 * inf = NaN, in the value and
    # in the backward.
    return torch.where(mask, x, 0.0).sum(dim=-1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return masked_sum(x, mask) / mask.sum(dim=-1).clamp(min=1).to(x.dtype)


def make_batch(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> PolicyBatch:
    if logprobs.dim() != 2 or logprobs.shape[0] == 0:
        raise ValueError(f"logprobs must be [B, L] with B >= 1, got {tuple(logprobs.shape)}")
    if old_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} "
            f"and mask {tuple(mask.shape)} must have the same shape"
        )
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be [B={logprobs.shape[0]}], got {advantages.shape}")
    dtype = compute_dtype(logprobs.dtype)
    mask = mask.bool()
    logprobs = logprobs.to(dtype)
    old = old_logprobs.detach().to(dtype)
    return PolicyBatch(
        logprobs=torch.where(mask, logprobs, 0.0),
        log_ratio=torch.where(mask, logprobs - old, 0.0),
        advantages=advantages.detach().to(dtype),
        mask=mask,
        lengths=mask.sum(dim=-1).to(dtype),
    )


def capped_ratio(log_ratio: Tensor, epsilon_high: float) -> Tensor:
    """min(ratio, 1+eps) computed as exp(min(log ratio, log(1+eps))): same value and
    gradient, and exp never sees a large argument, so no overflow and no inf * 0 in the
    backward whatever the completion length."""
    return torch.exp(log_ratio.clamp(max=math.log1p(epsilon_high)))


def ppo_clip(
    log_ratio: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's min(r A, clip(r, 1-eps_low, 1+eps_high) A), elementwise; also the clip flags.

    The unclipped branch r A is evaluated even where the clipped one wins, and the backward
    multiplies its zero weight by exp(log r): the log-ratio is capped at LOG_RATIO_MAX so
    that product is never 0 * inf.
    """
    ratio = torch.exp(log_ratio.clamp(max=LOG_RATIO_MAX))
    clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high)
    term = torch.minimum(ratio * advantages, clipped * advantages)
    # Clipped means the clip branch won and the gradient is zero.
    low = (advantages < 0) & (ratio < 1.0 - epsilon_low)
    high = (advantages > 0) & (ratio > 1.0 + epsilon_high)
    return term, low, high


def _seq_mean_token_mean(seq_terms: Tensor, lengths: Tensor, horizon: float) -> Tensor:
    return (seq_terms / lengths.clamp(min=1)).mean()


def _seq_mean_token_sum_norm(seq_terms: Tensor, lengths: Tensor, horizon: float) -> Tensor:
    return (seq_terms / horizon).mean()


def _token_mean(seq_terms: Tensor, lengths: Tensor, horizon: float) -> Tensor:
    return seq_terms.sum() / lengths.sum().clamp(min=1)


_AGGREGATORS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    SEQ_MEAN_TOKEN_MEAN: _seq_mean_token_mean,  # mean_i 1/|s_i| * term_i (GRPO)
    SEQ_MEAN_TOKEN_SUM_NORM: _seq_mean_token_sum_norm,  # mean_i 1/T * term_i (Dr. GRPO, TIC)
    TOKEN_MEAN: _token_mean,  # sum_i term_i / sum_i |s_i| (DAPO)
}
AGGREGATIONS: tuple[str, ...] = tuple(_AGGREGATORS)


def aggregate(seq_terms: Tensor, lengths: Tensor, aggregation: str, horizon: float) -> Tensor:
    """The minibatch objective from the sequence terms; `horizon` is T."""
    try:
        aggregator = _AGGREGATORS[aggregation]
    except KeyError:
        raise ValueError(
            f"unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}"
        ) from None
    return aggregator(seq_terms, lengths, horizon)


def _ratio_stats(prefix: str, log_ratio: Tensor) -> dict[str, float]:
    if log_ratio.numel() == 0:
        return {f"{prefix}_mean": 1.0, f"{prefix}_max": 1.0, f"{prefix}_min": 1.0}
    # float64: a trajectory ratio may be huge; it is reported as is (inf past e^709).
    ratio = torch.exp(log_ratio.double())
    return {
        f"{prefix}_mean": ratio.mean().item(),
        f"{prefix}_max": ratio.max().item(),
        f"{prefix}_min": ratio.min().item(),
    }


@torch.no_grad()
def policy_stats(batch: PolicyBatch, objective: Objective) -> dict[str, float]:
    stats = _ratio_stats("ratio", batch.log_ratio[batch.mask])
    if objective.seq_log_ratio is None:
        units = batch.mask
    else:
        units = batch.lengths > 0  # an empty completion has no ratio to speak of
        seq_log_ratio = objective.seq_log_ratio[units].double()
        stats.update(_ratio_stats("seq_ratio", seq_log_ratio))
        if seq_log_ratio.numel() > 0:
            stats["seq_log_ratio_mean"] = seq_log_ratio.mean().item()
            stats["seq_log_ratio_max"] = seq_log_ratio.max().item()
            stats["seq_log_ratio_min"] = seq_log_ratio.min().item()
        else:
            stats.update(seq_log_ratio_mean=0.0, seq_log_ratio_max=0.0, seq_log_ratio_min=0.0)
    count = max(int(units.sum()), 1)
    low = int(objective.clipped_low[units].sum())
    high = int(objective.clipped_high[units].sum())
    stats["clip_fraction_low"] = low / count
    stats["clip_fraction_high"] = high / count
    stats["clip_fraction"] = (low + high) / count  # a ratio cannot be both below and above
    return stats


def group_advantages(
    rewards: Tensor,
    normalize_std: bool = True,
    eps: float = 1e-6,
    *,
    batch_std: bool = False,
    lengths: Tensor | None = None,
) -> Tensor:
    """A = (R - mean_G R) / (std + eps) per group; rewards [N, G] -> advantages [N, G].

    std is Bessel-corrected (torch.std) over the group, or over the whole batch if
    `batch_std`; `normalize_std=False` gives R - mean (Dr. GRPO). With `lengths` [N, G],
    R / |s| replaces R (the "length-corrected" reading of TIC-GRPO in arXiv 2508.02833).
    A group whose (corrected) rewards are all equal gets exactly 0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, G], got {tuple(rewards.shape)}")
    r = rewards.to(compute_dtype(rewards.dtype))
    if r.shape[1] == 1:
        return torch.zeros_like(r)  # a group of one has no baseline (and no std)
    if lengths is not None:
        if lengths.shape != rewards.shape:
            raise ValueError(f"lengths {tuple(lengths.shape)} must match rewards")
        r = r / lengths.to(r.dtype).clamp(min=1)
    advantages = r - r.mean(dim=1, keepdim=True)
    if normalize_std:
        std = r.std() if batch_std else r.std(dim=1, keepdim=True)
        advantages = advantages / (std + eps)
    # The float mean of equal values need not equal them, and dividing that residue by a
    # zero std + eps would blow it up into a fake signal; a flat group teaches nothing.
    flat = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
    return torch.where(flat, 0.0, advantages)


# Schulman's estimators of KL(pi || pi_ref) from samples of pi, with log r = log pi_ref - log pi.
def _k1(log_r: Tensor) -> Tensor:
    return -log_r


def _k2(log_r: Tensor) -> Tensor:
    return 0.5 * log_r**2


def _k3(log_r: Tensor) -> Tensor:
    # expm1: near pi = pi_ref, where the KL is tiny, exp(x) - 1 - x cancels to noise and can
    # even go negative. The cap before exp is ppo_clip's: no inf, no inf * 0 in the backward.
    return torch.expm1(log_r.clamp(max=LOG_RATIO_MAX)) - log_r


_KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}
KL_ESTIMATORS: tuple[str, ...] = tuple(_KL_ESTIMATORS)


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str = "k3"
) -> Tensor:
    """Per-token KL estimate, masked mean per sequence, then mean over sequences."""
    try:
        kl = _KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(
            f"unknown KL estimator {estimator!r}; choose from {KL_ESTIMATORS}"
        ) from None
    if ref_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError("logprobs, ref_logprobs and mask must have the same shape")
    mask = mask.bool()
    dtype = compute_dtype(logprobs.dtype)
    log_r = torch.where(mask, ref_logprobs.detach().to(dtype) - logprobs.to(dtype), 0.0)
    return masked_mean(kl(log_r), mask).mean()
