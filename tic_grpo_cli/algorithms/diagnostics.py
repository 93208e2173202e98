"""Trajectory-ratio diagnostics of one minibatch step: how far pi_theta has moved from pi_old.

Logged for every algorithm alike (each optimizer step's row, under ``ratio_diag/``), from the
log-probs the loss already has, so they cost a few reductions. With the step index k inside
the rollout (the row's ``minibatch``), they show where in the inner loop a cap starts to bind.
For ``grpo_no_is`` the loss sees the frozen rollout policy, so every ratio there is 1.

Per completion i (tokens t, mask m): log rho_i = sum_t m_t (log pi_theta - log pi_old).
- ``log_rho_std``: the spread of log rho over the minibatch's completions;
- ``capped_fraction``: share of completions with rho_i > 1 + epsilon_high, where TIC-GRPO's cap
  (the paper's Eq. 8) drops the gradient, whichever algorithm is running;
- ``ess``: the normalised effective sample size of rho, (sum rho)^2 / (n sum rho^2), in (0, 1]
  (Kong 1992; 1 when every ratio is equal);
- ``kl_old``: KL(pi_old || pi_theta) per completion, the k3 estimator summed over tokens,
  sum_t (r_t - 1 - log r_t) with r_t = pi_theta / pi_old (Schulman 2020), unbiased under
  samples from pi_old and never negative.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Micro-batch sums whose weighted means merge exactly; `finish` turns them into the stats.
_MOMENTS = ("log_rho_mean", "log_rho_sq_mean", "rho_mean", "rho_sq_mean")


def ratio_moments(
    logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, epsilon_high: float
) -> dict[str, float]:
    """Per-completion means over one micro-batch: [B, L] log-probs and mask -> floats.

    The means merge across micro-batches as weighted means (weight = completions); pass the
    merged dict to `finish`. rho is computed in float64 with log rho capped at 700 so a far
    off-policy completion cannot overflow.
    """
    with torch.no_grad():
        log_r = ((logprobs - old_logprobs) * mask).double()
        log_rho = log_r.sum(-1)
        rho = log_rho.clamp(max=700.0).exp()
        k3 = ((log_r.exp() - 1 - log_r) * mask).sum(-1)
        return {
            "log_rho_mean": log_rho.mean().item(),
            "log_rho_sq_mean": log_rho.square().mean().item(),
            "rho_mean": rho.mean().item(),
            "rho_sq_mean": rho.square().mean().item(),
            "capped_fraction": (log_rho > math.log1p(epsilon_high)).double().mean().item(),
            "kl_old": k3.mean().item(),
        }


def finish(merged: dict[str, float]) -> dict[str, float]:
    """The logged stats from merged moments: log_rho_std, ess, capped_fraction, kl_old."""
    var = merged["log_rho_sq_mean"] - merged["log_rho_mean"] ** 2
    ess = merged["rho_mean"] ** 2 / merged["rho_sq_mean"] if merged["rho_sq_mean"] > 0 else 1.0
    out = {k: v for k, v in merged.items() if k not in _MOMENTS}
    # Population std over the minibatch; rounding can leave a tiny negative variance.
    return {"log_rho_std": math.sqrt(max(var, 0.0)), "ess": min(ess, 1.0), **out}
