"""DAPO: J = 1/sum_i |s_i| sum_i sum_t min(r_t A_i, clip(r_t, 1-eps_low, 1+eps_high) A_i).

GRPO's token clip averaged over every token of the minibatch, so long completions weigh
in proportion to their length; "clip-higher" is just eps_high > eps_low (0.28 vs 0.2).
"""

from __future__ import annotations

from . import grpo
from .core import TOKEN_MEAN, Algorithm

ALGORITHM = Algorithm("dapo", grpo.objective, TOKEN_MEAN)
