"""Evaluation during training."""

from __future__ import annotations

import logging

from tests.conftest import compose_config


def test_evaluation_during_training_warns_once_naming_the_trainer_key(tmp_path, caplog):
    from tic_grpo_cli.train.loop import train

    # One token per completion: no arithmetic answer ends in time. Evaluations at 0, 1, 2.
    cfg = compose_config(
        "trainer.max_steps=2", "trainer.rollout_batch_size=2", "trainer.group_size=2",
        "trainer.minibatch_size=2", "trainer.eval_every=1", "trainer.eval_limit=4",
        "trainer.save_every=0", "trainer.log_samples_every=0", "dataset.max_completion_length=1",
        "wandb.mode=disabled", "hardware.num_threads=1",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="tic_grpo"):
        train(cfg, tmp_path)
    warnings = [r.message for r in caplog.records if "token limit" in r.message]
    assert len(warnings) == 1 and "raise trainer.max_completion_length" in warnings[0]
