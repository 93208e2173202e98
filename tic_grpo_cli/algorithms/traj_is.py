"""+Traj_IS (paper Table 2): J = mean_i 1/T min(rho_i A_i, clip(rho_i, 1-eps_low, 1+eps_high) A_i).

The trajectory ratio rho_i = prod_t r_t with PPO's two-sided clip. For A_i < 0 the
objective is unbounded in rho_i, so log rho_i is capped at LOG_RATIO_MAX before exp
(beyond it the sequence gets no gradient).
"""

from __future__ import annotations

import torch

from .core import SEQ_MEAN_TOKEN_SUM_NORM, Algorithm, Objective, PolicyBatch, ppo_clip


def objective(batch: PolicyBatch, epsilon_low: float, epsilon_high: float) -> Objective:
    log_rho = batch.log_ratio.sum(dim=-1)
    terms, low, high = ppo_clip(log_rho, batch.advantages, epsilon_low, epsilon_high)
    nonempty = batch.lengths > 0  # keep an empty completion's constant term out
    return Objective(torch.where(nonempty, terms, 0.0), low, high, seq_log_ratio=log_rho)


ALGORITHM = Algorithm("traj_is", objective, SEQ_MEAN_TOKEN_SUM_NORM)
