"""DPPO-Binary-TV ("Rethinking the Trust Region in LLM RL", arXiv 2602.04879, Eq. 12-13):

    J = 1/sum_i |s_i| sum_i sum_t M_t r_t A_i
    M_t = 0 if (A_i > 0 and pi(s_t) - pi_old(s_t) > delta_high)
            or (A_i < 0 and pi_old(s_t) - pi(s_t) > delta_low),  else 1

PPO's ratio clip replaced by a trust region on the divergence between pi_old and pi,
approximated by the binary total variation |pi_old(s_t) - pi(s_t)| of the sampled token
(probabilities, not ratios: a rare token may move a lot in ratio and little in mass). A token
is masked only when it moves further out in the direction its advantage pushes, so a masked
token gets no gradient; the others the plain r_t A_i grad log pi (no ratio cap, C = inf in
the paper; the log-ratio is capped at LOG_RATIO_MAX only to keep float32 finite).
Here epsilon_low / epsilon_high are the TV thresholds delta (0.15 in the paper).
"""

from __future__ import annotations

import torch

from .core import LOG_RATIO_MAX, TOKEN_MEAN, Algorithm, Objective, PolicyBatch, masked_sum


def objective(batch: PolicyBatch, epsilon_low: float, epsilon_high: float) -> Objective:
    advantages = batch.advantages[:, None]
    prob = torch.exp(batch.logprobs.detach())
    old_prob = torch.exp(batch.logprobs.detach() - batch.log_ratio.detach())
    moved = prob - old_prob
    high = batch.mask & (advantages > 0) & (moved > epsilon_high)
    low = batch.mask & (advantages < 0) & (-moved > epsilon_low)
    ratio = torch.exp(batch.log_ratio.clamp(max=LOG_RATIO_MAX))
    term = torch.where(high | low, 0.0, ratio * advantages)
    return Objective(masked_sum(term, batch.mask), low, high)


ALGORITHM = Algorithm("dppo", objective, TOKEN_MEAN)
