"""GMPO (Geometric-Mean Policy Optimization, arXiv 2507.20673; docs/algorithms.md):

    J = 1/G sum_i sign(A_i) prod_t |min(r_t A_i, clip(r_t, e^-eps_low, e^eps_high) A_i)|^(1/|s_i|)

In log space, with the token clip taken before the mean (one-sided, by the sign of A):
    J = mean_i A_i exp(1/|s_i| sum_t c_t),  c_t = min(log r_t, eps_high)  if A_i > 0,
                                             c_t = max(log r_t, -eps_low)  if A_i < 0.
A clipped token gets no gradient; the others get A_i s_i / |s_i| grad log pi. The epsilons
are in log space (the paper's default (e^-0.4, e^0.4)). With equal token ratios the
geometric mean is that ratio whatever |s_i|: the objective does not depend on length.
"""

from __future__ import annotations

import torch

from .core import (
    LOG_RATIO_MAX,
    SEQ_MEAN_TOKEN_MEAN,
    Algorithm,
    Objective,
    PolicyBatch,
    masked_sum,
)


def objective(batch: PolicyBatch, epsilon_low: float, epsilon_high: float) -> Objective:
    advantages = batch.advantages[:, None]
    positive = advantages > 0
    clipped = torch.where(
        positive,
        batch.log_ratio.clamp(max=epsilon_high),
        batch.log_ratio.clamp(min=-epsilon_low),
    )
    log_s = masked_sum(clipped, batch.mask) / batch.lengths.clamp(min=1)
    # For A < 0 nothing bounds log s from above; past LOG_RATIO_MAX the sequence gets no
    # gradient rather than an inf.
    terms = torch.exp(log_s.clamp(max=LOG_RATIO_MAX)) * batch.advantages
    high = batch.mask & positive & (batch.log_ratio > epsilon_high)
    low = batch.mask & (advantages < 0) & (batch.log_ratio < -epsilon_low)
    # One term per completion (mean over i): counted |s_i| times under seq_mean_token_mean.
    # An empty completion has length 0, so its term is already 0.
    return Objective(terms * batch.lengths, low, high)


ALGORITHM = Algorithm("gmpo", objective, SEQ_MEAN_TOKEN_MEAN)
