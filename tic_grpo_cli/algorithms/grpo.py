"""GRPO (Eq. 3-6): J = mean_i 1/|s_i| sum_t min(r_t A_i, clip(r_t, 1-eps_low, 1+eps_high) A_i).

Token-level PPO clip. Dr. GRPO and DAPO reuse `objective` with another aggregation.
"""

from __future__ import annotations

from .core import SEQ_MEAN_TOKEN_MEAN, Algorithm, Objective, PolicyBatch, masked_sum, ppo_clip


def objective(batch: PolicyBatch, epsilon_low: float, epsilon_high: float) -> Objective:
    term, low, high = ppo_clip(
        batch.log_ratio, batch.advantages[:, None], epsilon_low, epsilon_high
    )
    return Objective(masked_sum(term, batch.mask), low, high)


ALGORITHM = Algorithm("grpo", objective, SEQ_MEAN_TOKEN_MEAN)
