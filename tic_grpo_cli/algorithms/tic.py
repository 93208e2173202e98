"""TIC-GRPO (paper Eq. 8): J = mean_i 1/T min(rho_i, 1+eps_high) A_i, rho_i = prod_t r_t.

The full trajectory ratio (no 1/|s| root: the geometric mean is a biased estimator), capped
from above only and whatever the sign of A_i, so the gradient is
1[rho_i <= 1+eps_high] rho_i A_i sum_t grad log pi / T. The cap is taken in log space,
which keeps value and gradient finite for any completion length.
"""

from __future__ import annotations

import math

import torch

from .core import SEQ_MEAN_TOKEN_SUM_NORM, Algorithm, Objective, PolicyBatch, capped_ratio


def objective(batch: PolicyBatch, epsilon_low: float, epsilon_high: float) -> Objective:
    del epsilon_low  # no lower clip: a small ratio keeps its (small) gradient
    log_rho = batch.log_ratio.sum(dim=-1)
    terms = capped_ratio(log_rho, epsilon_high) * batch.advantages
    # An empty completion has no tokens to move; keep its constant A_i out of the value.
    nonempty = batch.lengths > 0
    high = log_rho > math.log1p(epsilon_high)
    return Objective(
        torch.where(nonempty, terms, 0.0), torch.zeros_like(high), high, seq_log_ratio=log_rho
    )


ALGORITHM = Algorithm("tic", objective, SEQ_MEAN_TOKEN_SUM_NORM)
