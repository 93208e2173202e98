"""Statistics over seeds: mean, sample std and a two-sided 95% Student-t interval
mean ± t(0.975, n-1) · std / sqrt(n), with the t quantile computed exactly (no scipy)."""

from __future__ import annotations

import math
import statistics


def _t_two_sided_prob(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df (Abramowitz & Stegun 26.7.3/26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        term, total = math.cos(theta), 0.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + s * total)
    term, total = 1.0, 0.0
    for k in range(1, df // 2 + 1):
        total += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return s * total


def t_quantile_975(df: int) -> float:
    """t(0.975, df), the multiplier of a two-sided 95% interval; no scipy needed."""
    lo, hi = 0.0, math.pi / 2  # bisect on theta = atan(t / sqrt(df)): bounded and monotone
    for _ in range(100):
        mid = (lo + hi) / 2
        if _t_two_sided_prob(math.sqrt(df) * math.tan(mid), df) < 0.95:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def describe(values: list[float]) -> dict[str, float | None]:
    """Mean, sample std and 95% t interval; std and interval are None for n < 2."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95_low": None, "ci95_high": None}
    mean = statistics.fmean(values)
    if n == 1:
        return {"mean": mean, "std": None, "ci95_low": None, "ci95_high": None}
    std = statistics.stdev(values)
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}
