"""The run says when it cannot learn: most completions cut at the length limit, or no
group with a reward spread (zero advantages, zero gradient), for several rollouts."""

from __future__ import annotations

import logging

import pytest
from hydra import compose, initialize_config_module

from tic_grpo_cli.config.schema import register_configs
from tic_grpo_cli.train.loop import train
from tic_grpo_cli.train.signals import LearningSignals

HEALTHY = {"truncated_fraction": 0.1, "frac_zero_std_groups": 0.3, "accuracy": 0.4}
FLAT = {"truncated_fraction": 0.0, "frac_zero_std_groups": 1.0, "accuracy": 0.0}
CUT = {"truncated_fraction": 0.9, "frac_zero_std_groups": 0.5, "accuracy": 0.2}


def feed(signals: LearningSignals, rows: list[dict]) -> list[str | None]:
    return [signals(row) for row in rows]


def test_healthy_rollouts_say_nothing():
    assert feed(LearningSignals(96), [HEALTHY] * 50) == [None] * 50


def test_no_spread_warns_after_patience_then_every_period():
    said = feed(LearningSignals(96, patience=3, every=5), [FLAT] * 14)
    assert [i for i, s in enumerate(said) if s] == [2, 7, 12]  # rollouts 3, 8, 13
    assert "frac_zero_std_groups 1.0" in said[2] and "3 rollouts in a row" in said[2]
    assert "dataset.reward.format_pattern" in said[2] and "dataset.system_prompt" in said[2]
    assert "no completion is correct" in said[2]


def test_a_healthy_rollout_resets_the_count():
    said = feed(LearningSignals(96, patience=3), [FLAT, FLAT, HEALTHY, FLAT, FLAT])
    assert said == [None] * 5


def test_truncation_names_the_limit_and_the_key():
    said = feed(LearningSignals(96, patience=2), [CUT, CUT])
    assert said[0] is None
    assert "90% of completions hit the 96-token limit" in said[1]
    assert "dataset.max_completion_length" in said[1]


def test_no_spread_with_truncation_names_both_causes():
    said = feed(LearningSignals(96, patience=1), [{**FLAT, "truncated_fraction": 0.94}])
    assert "no learning signal" in said[0] and "hit the 96-token limit" in said[0]


def test_all_correct_asks_for_harder_problems():
    said = LearningSignals(8, patience=1)({**FLAT, "accuracy": 1.0})
    assert "every completion is correct" in said and "harder" in said


def test_patience_below_one_is_refused():
    with pytest.raises(ValueError, match="patience"):
        LearningSignals(8, patience=0)


def test_a_run_that_cannot_learn_says_so(tmp_path, caplog):
    """One token cannot hold an answer: every completion is cut and wrong, every group flat."""
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "trainer.max_steps=8",
                "trainer.rollout_batch_size=4",
                "trainer.group_size=4",
                "trainer.minibatch_size=2",
                "trainer.eval_every=0",
                "trainer.save_every=0",
                "dataset.max_completion_length=1",
                "wandb.mode=disabled",
                "hardware.num_threads=1",
            ],
        )
    with caplog.at_level(logging.WARNING, logger="tic_grpo"):
        train(cfg, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    said = [w for w in warnings if "no learning signal" in w]
    assert len(said) == 1, warnings  # 4 rollouts: once, at the third
    assert "hit the 1-token limit" in said[0] and "dataset.max_completion_length" in said[0]
