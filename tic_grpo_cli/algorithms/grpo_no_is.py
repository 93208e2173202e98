"""GRPO without importance sampling (paper Fig. 1): J = mean_i 1/|s_i| sum_t log pi(s_t) A_i.

Plain policy gradient: no ratio, no clip. The paper's ablation needs this gradient at the
frozen rollout parameters theta_old for every one of the K minibatches of an inner loop,
so the TRAINER must evaluate `logprobs` with a frozen copy of the rollout policy (and
hand the gradients to the live policy's optimizer); on the live model after some updates
this is not the algorithm. The ratio stats it reports should then stay at exactly 1.
"""

from __future__ import annotations

import torch

from .core import SEQ_MEAN_TOKEN_MEAN, Algorithm, Objective, PolicyBatch, masked_sum


def objective(batch: PolicyBatch, epsilon_low: float, epsilon_high: float) -> Objective:
    del epsilon_low, epsilon_high  # nothing is clipped
    terms = masked_sum(batch.logprobs * batch.advantages[:, None], batch.mask)
    never = torch.zeros_like(batch.mask)
    return Objective(terms, never, never)


ALGORITHM = Algorithm("grpo_no_is", objective, SEQ_MEAN_TOKEN_MEAN)
