"""Dr. GRPO: J = mean_i 1/T sum_t min(r_t A_i, clip(r_t, 1-eps_low, 1+eps_high) A_i).

GRPO's token clip with the constant 1/T in place of 1/|s_i|, which removes the length
bias. Its advantages are R - mean (no std): that is `normalize_std=False` in the trainer.
"""

from __future__ import annotations

from . import grpo
from .core import SEQ_MEAN_TOKEN_SUM_NORM, Algorithm

ALGORITHM = Algorithm("dr_grpo", grpo.objective, SEQ_MEAN_TOKEN_SUM_NORM)
