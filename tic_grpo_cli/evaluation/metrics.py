"""Evaluation metrics over sampled completions: Avg@k, unbiased pass@k, maj@k.

Pure functions of the per-example predictions that `eval_model.evaluate_model` builds, so
each can be checked against numbers worked out by hand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    The probability that k samples drawn without replacement from the n include a correct
    one (Chen et al. 2021). Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i): every factor lies
    in [0, 1], so nothing overflows for large n, unlike the ratio of binomials in floats.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    remaining = 1.0
    for i in range(n - c + 1, n + 1):
        remaining *= 1.0 - k / i
    return 1.0 - remaining


def pass_ks(n: int) -> list[int]:
    """The k reported for n samples: powers of two up to n, and n itself."""
    ks = [2**j for j in range(n.bit_length()) if 2**j <= n]
    return ks if ks[-1] == n else [*ks, n]


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """Accuracy of the most frequent answer (maj@k for k = len(answers)).

    Votes are on the scorer's normalised answers, so "1,000", "1000" and "1000.0" (or
    ``\\frac{1}{2}``, ``0.5`` and ``1/2``) are one answer. Unparseable answers (None) do not
    vote; with no votes at all the example counts as wrong. An answer is correct if a sample
    that produced it was scored correct (scorers judge the normalised answer, so all such
    samples agree). Ties are broken uniformly at
    random *in expectation*: with t answers tied for the most votes, of which r are correct,
    the example scores r / t. That keeps maj@k independent of the order samples were drawn.
    """
    votes = Counter(answer for answer in answers if answer is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winners = [answer for answer, count in votes.items() if count == top]
    right = {a for a, ok in zip(answers, correct, strict=True) if a is not None and ok}
    return sum(answer in right for answer in winners) / len(winners)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(predictions: Sequence[dict[str, Any]], num_samples: int) -> dict[str, float]:
    """Aggregate metrics over examples, each with `num_samples` completions.

    `accuracy` is Avg@k: the mean over examples of the fraction of correct samples (greedy
    accuracy when k = 1); with k > 1 it is also reported as `avg@k`. `completion_length/mean` counts generated tokens, the EOS that
    ended a completion included; `unparseable_fraction` is the share of completions whose
    answer the scorer could not extract, `timed_out_fraction` the share whose verification
    ran out of time (scored wrong). Predictions without `normalized` (older
    predictions.jsonl files) vote on `extracted`.
    """
    if not predictions:
        raise ValueError("no predictions to summarise")
    n = num_samples
    if any(len(p["correct"]) != n for p in predictions):
        raise ValueError(f"every prediction needs exactly {n} samples")
    counts = [sum(bool(ok) for ok in p["correct"]) for p in predictions]
    metrics = {"accuracy": _mean([c / n for c in counts])}
    if n > 1:
        # The same number under the paper's name (Avg@32), so a reader of results.json or
        # the table sees what the accuracy averages over.
        metrics[f"avg@{n}"] = metrics["accuracy"]
    for k in pass_ks(n):
        metrics[f"pass@{k}"] = _mean([pass_at_k(n, c, k) for c in counts])
    if n > 1:
        metrics[f"maj@{n}"] = _mean(
            [majority_vote(p.get("normalized", p["extracted"]), p["correct"]) for p in predictions]
        )
    lengths = [length for p in predictions for length in p["lengths"]]
    extracted = [answer for p in predictions for answer in p["extracted"]]
    rewards = [reward for p in predictions for reward in p["rewards"]]
    metrics["reward/mean"] = _mean(rewards)
    metrics["completion_length/mean"] = _mean(lengths)
    metrics["unparseable_fraction"] = sum(a is None for a in extracted) / len(extracted)
    timed_out = [t for p in predictions for t in p.get("timed_out", ())]
    metrics["timed_out_fraction"] = sum(timed_out) / len(extracted)
    metrics["num_examples"] = len(predictions)
    return metrics
