"""+UB_Clip (paper Table 2): J = mean_i 1/T sum_t min(r_t, 1+eps_high) A_i.

GRPO's token ratios with PPO's clip replaced by TIC's upper bound only: the cap applies
whatever the sign of A_i and there is no lower clip.
"""

from __future__ import annotations

import math

import torch

from .core import (
    SEQ_MEAN_TOKEN_SUM_NORM,
    Algorithm,
    Objective,
    PolicyBatch,
    capped_ratio,
    masked_sum,
)


def objective(batch: PolicyBatch, epsilon_low: float, epsilon_high: float) -> Objective:
    del epsilon_low  # upper bound only
    term = capped_ratio(batch.log_ratio, epsilon_high) * batch.advantages[:, None]
    high = batch.log_ratio > math.log1p(epsilon_high)
    return Objective(masked_sum(term, batch.mask), torch.zeros_like(high), high)


ALGORITHM = Algorithm("ub_clip", objective, SEQ_MEAN_TOKEN_SUM_NORM)
