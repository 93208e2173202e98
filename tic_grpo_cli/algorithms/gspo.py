"""GSPO: J = mean_i min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i), s_i = exp(mean_t log r_t).

The geometric-mean sequence ratio with PPO's clip; the gradient flows through the mean of
the token log-ratios, s_i A_i / |s_i| sum_t grad log pi. Under another aggregation the
sequence term counts once per token (|s_i| times), as when it is broadcast to the tokens.
"""

from __future__ import annotations

from .core import SEQ_MEAN_TOKEN_MEAN, Algorithm, Objective, PolicyBatch, ppo_clip


def objective(batch: PolicyBatch, epsilon_low: float, epsilon_high: float) -> Objective:
    log_s = batch.log_ratio.sum(dim=-1) / batch.lengths.clamp(min=1)
    terms, low, high = ppo_clip(log_s, batch.advantages, epsilon_low, epsilon_high)
    # Empty completions have length 0, so their broadcast term is already 0.
    return Objective(terms * batch.lengths, low, high, seq_log_ratio=log_s)


ALGORITHM = Algorithm("gspo", objective, SEQ_MEAN_TOKEN_MEAN)
