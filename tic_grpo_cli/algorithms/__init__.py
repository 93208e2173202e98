"""The policy losses of TIC-GRPO and its peers, picked by name.

Each algorithm is a module with an `objective(batch, epsilon_low, epsilon_high)` and a
default aggregation; `compute_policy_loss` is the one entry point the trainer calls.
"""

from __future__ import annotations

from torch import Tensor

from . import cispo, dapo, dppo, dr_grpo, gmpo, grpo, grpo_no_is, gspo, tic, traj_is, ub_clip
from .core import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    Algorithm,
    aggregate,
    group_advantages,
    kl_penalty,
    make_batch,
    policy_stats,
)
from .correction import (
    CORRECTIONS,
    Correction,
    correction_weights,
    mismatch_stats,
    scale_token_gradients,
)

REGISTRY: dict[str, Algorithm] = {
    module.ALGORITHM.name: module.ALGORITHM
    for module in (grpo, grpo_no_is, tic, ub_clip, traj_is, gspo, dr_grpo, dapo, cispo, gmpo, dppo)
}
ALGORITHMS: tuple[str, ...] = tuple(REGISTRY)

__all__ = [
    "AGGREGATIONS",
    "ALGORITHMS",
    "CORRECTIONS",
    "KL_ESTIMATORS",
    "REGISTRY",
    "Correction",
    "compute_policy_loss",
    "correction_weights",
    "default_aggregation",
    "group_advantages",
    "kl_penalty",
    "mismatch_stats",
]


def _algorithm(name: str) -> Algorithm:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; choose from {ALGORITHMS}") from None


def default_aggregation(name: str) -> str:
    """The aggregation the paper gives the algorithm `name`."""
    return _algorithm(name).default_aggregation


def compute_policy_loss(
    name: str,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.28,
    max_completion_length: int | None = None,
    aggregation: str | None = None,
    correction: Correction | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Minus the objective of algorithm `name` on a minibatch, and float stats.

    logprobs, old_logprobs, mask: [B, L]; advantages: [B]. `max_completion_length` is the
    paper's T (None: L). `correction` holds the rollout correction's stop-gradient weights
    (algorithms/correction.py). Stats: clip_fraction (+ _low, _high), ratio_{mean,max,min}
    over tokens; sequence-level algorithms add seq_ratio_* and seq_log_ratio_*.
    """
    algorithm = _algorithm(name)
    if epsilon_low < 0 or epsilon_high < 0:
        raise ValueError(f"epsilons must be >= 0, got {epsilon_low}, {epsilon_high}")
    batch = make_batch(logprobs, old_logprobs, advantages, mask)
    horizon = logprobs.shape[1] if max_completion_length is None else max_completion_length
    if max_completion_length is not None:
        longest = int(batch.lengths.max())
        if max_completion_length < max(longest, 1):
            raise ValueError(
                f"max_completion_length={max_completion_length} is shorter than a "
                f"completion of {longest} tokens"
            )
    correction = correction or Correction()
    if correction.token_weights is not None:
        batch = scale_token_gradients(batch, correction.token_weights)
    objective = algorithm.objective(batch, epsilon_low, epsilon_high)
    seq_terms = objective.seq_terms
    if correction.seq_weights is not None:
        seq_terms = seq_terms * correction.seq_weights.detach().to(seq_terms.dtype)
    value = aggregate(
        seq_terms, batch.lengths, aggregation or algorithm.default_aggregation, horizon
    )
    return -value, policy_stats(batch, objective)
