"""The trajectory-ratio diagnostics of the inner loop, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tic_grpo_cli.algorithms import diagnostics


def test_ratio_diagnostics_by_hand():
    # Two completions; the second has one padded token. log rho = 0.2 + 0.1 = 0.3 and -0.5.
    old = torch.zeros(2, 2)
    new = torch.tensor([[0.2, 0.1], [-0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    moments = diagnostics.ratio_moments(new, old, mask, epsilon_high=0.28)
    stats = diagnostics.finish(moments)
    rho = [math.exp(0.3), math.exp(-0.5)]
    assert stats["log_rho_std"] == pytest.approx(0.4)  # population std of 0.3 and -0.5
    assert stats["capped_fraction"] == 0.5  # exp(0.3) = 1.35 > 1.28; exp(-0.5) is not
    assert stats["ess"] == pytest.approx(sum(rho) ** 2 / (2 * sum(r * r for r in rho)))
    k3 = [math.exp(x) - 1 - x for x in (0.2, 0.1, -0.5)]
    assert stats["kl_old"] == pytest.approx((k3[0] + k3[1] + k3[2]) / 2)


def test_ratio_diagnostics_merge_across_micro_batches():
    torch.manual_seed(0)
    old, new = torch.randn(6, 5), torch.randn(6, 5) * 0.1
    mask = (torch.rand(6, 5) > 0.3).float()
    whole = diagnostics.finish(diagnostics.ratio_moments(new, old + new * 0, mask, 0.28))
    merged: dict[str, float] = {}
    for rows, weight in ((slice(0, 2), 2 / 6), (slice(2, 6), 4 / 6)):
        part = diagnostics.ratio_moments(new[rows], old[rows], mask[rows], 0.28)
        for key, value in part.items():
            merged[key] = merged.get(key, 0.0) + value * weight
    for key, value in diagnostics.finish(merged).items():
        assert value == pytest.approx(whole[key]), key
