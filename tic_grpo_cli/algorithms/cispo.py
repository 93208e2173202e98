"""CISPO (MiniMax-M1, arXiv 2506.13585, Eq. 4-5; docs/algorithms.md):

    J = 1/sum_i |s_i| sum_i sum_t sg(clip(r_t, 1-eps_low, 1+eps_high)) A_i log pi_theta(s_t)

The importance weight is clipped and then treated as a constant (stop-gradient), so a token
whose ratio left the range keeps its gradient, scaled by the clipped weight: unlike PPO's
clip, no token is dropped from the update. Every token of the minibatch weighs the same
(token_mean), as in the paper. Here "clipped" (clip_fraction) means the weight was
truncated, not that the gradient vanished.
"""

from __future__ import annotations

import torch

from .core import TOKEN_MEAN, Algorithm, Objective, PolicyBatch, masked_sum


def objective(batch: PolicyBatch, epsilon_low: float, epsilon_high: float) -> Objective:
    # exp may overflow to inf for a huge log-ratio; the clamp brings it back, and no
    # gradient ever flows through the weight.
    ratio = torch.exp(batch.log_ratio.detach())
    weight = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high)
    term = weight * batch.advantages[:, None] * batch.logprobs
    low = batch.mask & (ratio < 1.0 - epsilon_low)
    high = batch.mask & (ratio > 1.0 + epsilon_high)
    return Objective(masked_sum(term, batch.mask), low, high)


ALGORITHM = Algorithm("cispo", objective, TOKEN_MEAN)
