"""Sampler-trainer mismatch: how far apart the two are, and the rollout corrections.

The sampler (KV-cache decoding, another precision, another engine) and the trainer's forward
give slightly different log-probs for the same tokens. With old log-probs recomputed by the
trainer, pi_old is not exactly the distribution pi_sampler that drew the completions, and
the ratio pi_old / pi_sampler is an importance weight no algorithm's own ratio tracks. A
rollout correction multiplies each completion's loss term by that weight, truncated or
masked, as a constant (stop-gradient); docs/algorithms.md gives the sources:

- token_tis: w_t = min(pi_old(s_t) / pi_sampler(s_t), C), one weight per token;
- seq_tis:   w_i = min(prod_t pi_old / pi_sampler, C), one per completion, in log space;
- seq_mis:   w_i = 1 if prod_t pi_old / pi_sampler lies in [1/C, C], else 0 (dropped).

A token weight scales the gradient that flows through that token's log-prob (for the
token-level objectives exactly the gradient of w_t times the token's term; the loss value
is left as it is); a completion weight multiplies the completion's sequence term.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .core import PolicyBatch, compute_dtype, masked_sum

NONE, TOKEN_TIS, SEQ_TIS, SEQ_MIS = "none", "token_tis", "seq_tis", "seq_mis"
CORRECTIONS: tuple[str, ...] = (NONE, TOKEN_TIS, SEQ_TIS, SEQ_MIS)


@dataclass(frozen=True)
class Correction:
    """Stop-gradient weights for one minibatch; at most one of the two is set."""

    token_weights: Tensor | None = None  # [B, L], 1 on padding
    seq_weights: Tensor | None = None  # [B]


def _log_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> Tensor:
    """log pi_old - log pi_sampler per token, 0 on padding (which may hold anything)."""
    dtype = compute_dtype(old_logprobs.dtype)
    diff = old_logprobs.detach().to(dtype) - sampler_logprobs.detach().to(dtype)
    return torch.where(mask.bool(), diff, 0.0)


def correction_weights(
    mode: str, old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, cap: float
) -> Correction:
    """The weights of correction `mode` with threshold C = `cap` (> 1).

    old_logprobs, sampler_logprobs, mask: [B, L]. Raises ValueError on an unknown mode or
    C <= 1. Weights are computed in log space, so no product over a long completion can
    overflow.
    """
    if mode not in CORRECTIONS:
        raise ValueError(f"unknown rollout correction {mode!r}; choose from {CORRECTIONS}")
    if cap <= 1:
        raise ValueError(f"the rollout correction threshold C must be > 1, got {cap}")
    if mode == NONE:
        return Correction()
    log_w = _log_weights(old_logprobs, sampler_logprobs, mask)
    if mode == TOKEN_TIS:
        return Correction(token_weights=torch.exp(log_w.clamp(max=math.log(cap))))
    log_seq = log_w.sum(dim=-1)
    if mode == SEQ_TIS:
        return Correction(seq_weights=torch.exp(log_seq.clamp(max=math.log(cap))))
    inside = log_seq.abs() <= math.log(cap)
    return Correction(seq_weights=inside.to(log_seq.dtype))


def scale_token_gradients(batch: PolicyBatch, weights: Tensor) -> PolicyBatch:
    """The same batch whose log-probs carry their value unchanged and `weights` [B, L] times
    their gradient: x' = sg(x) + w (x - sg(x))."""
    w = weights.detach().to(batch.logprobs.dtype)

    def scaled(x: Tensor) -> Tensor:
        return x.detach() + w * (x - x.detach())

    return dataclasses.replace(
        batch, logprobs=scaled(batch.logprobs), log_ratio=scaled(batch.log_ratio)
    )


@torch.no_grad()
def mismatch_stats(
    old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, mode: str, cap: float
) -> dict[str, float]:
    """How far the trainer's log-probs are from the sampler's over a rollout [B, L].

    abs_logprob_diff_{mean,max}: |log pi_old - log pi_sampler| over tokens; kl: KL(pi_sampler
    || pi_old) per token, Schulman's k3 estimate from the sampler's own samples; seq_kl: the
    same summed over each completion, mean over completions; corrected_fraction: the share
    of tokens (token_tis) or completions (seq_*) whose weight `mode` truncated or dropped.
    """
    mask = mask.bool()
    log_w = _log_weights(old_logprobs, sampler_logprobs, mask).double()
    tokens = max(int(mask.sum()), 1)
    k3 = torch.where(mask, torch.expm1(log_w) - log_w, 0.0)
    stats = {
        "abs_logprob_diff_mean": (log_w.abs().sum() / tokens).item(),
        "abs_logprob_diff_max": log_w.abs().max().item() if mask.any() else 0.0,
        "kl": (k3.sum() / tokens).item(),
        "seq_kl": k3.sum(dim=-1).mean().item(),
    }
    log_cap = math.log(cap)
    if mode == TOKEN_TIS:
        corrected = float((log_w > log_cap).sum()) / tokens
    elif mode in (SEQ_TIS, SEQ_MIS):
        log_seq = masked_sum(log_w, mask)
        outside = log_seq > log_cap if mode == SEQ_TIS else log_seq.abs() > log_cap
        corrected = float(outside.sum()) / max(len(log_seq), 1)
    else:
        corrected = 0.0
    stats["corrected_fraction"] = corrected
    return stats
