"""The `chain` task: long worked answers, disjoint splits, whole-chain scoring."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config
from tic_grpo_cli.config.schema import ConfigError
from tic_grpo_cli.config.validation import validate_train
from tic_grpo_cli.data import build_task, chain


def test_worked_answer_by_hand():
    problem = chain.ChainProblem(57, (("+", 3), ("-", 8), ("+", 6)))
    assert problem.question == "57+3-8+6="
    assert problem.answer == "57+3=60,60-8=52,52+6=58"


@pytest.mark.parametrize("length", [2, 4, 8])
def test_problems_are_valid_and_fit_the_token_budget(length):
    for p in chain.generate("train", 300, seed=1, chain_length=length):
        assert len(p.steps) == length
        value = p.start
        for op, b in p.steps:
            assert 1 <= b <= 9
            value = value + b if op == "+" else value - b
            assert 0 <= value <= 99
        assert int(p.answer.rsplit("=", 1)[1]) == value
        # Every step is at most "99-9=90," and the answer plus EOS fits 8 tokens per step.
        assert len(p.answer) + 1 <= 8 * length == chain.max_completion_tokens(length)


def test_splits_are_disjoint_and_deterministic():
    splits = {s: chain.generate(s, 400, seed=0, chain_length=3) for s in chain.SPLITS}
    questions = {s: {p.question for p in ps} for s, ps in splits.items()}
    assert all(len(q) == 400 for q in questions.values())
    assert not questions["train"] & questions["test"]
    assert not questions["train"] & questions["validation"]
    assert not questions["validation"] & questions["test"]
    assert chain.generate("test", 400, seed=0, chain_length=3) == splits["test"]
    assert chain.generate("test", 50, seed=1, chain_length=3) != splits["test"][:50]


def test_bad_split_and_too_many_problems():
    with pytest.raises(ValueError, match="split must be one of"):
        chain.generate("dev", 5)
    with pytest.raises(ValueError, match=r"only .* distinct"):
        chain.generate("test", 5000, chain_length=1)  # ~190 one-step test problems exist


def test_task_scores_the_whole_chain_and_evaluates_validation_on_request():
    cfg = compose_config("dataset=chain", "dataset.test_split=validation", "dataset.test_size=20")
    task = build_task(cfg.dataset)
    example = task.test[0]
    assert chain.split_of(example["question"]) == "validation"
    assert example["prompt"] == example["question"]
    right = example["answer"]
    wrong_last = right[:-1] + str((int(right[-1]) + 1) % 10)
    result = task.score([right, wrong_last, right + ",", ""], [example] * 4)
    assert result.correct == [True, False, False, False]


def test_chain_long_preset_and_bad_splits():
    cfg = compose_config("dataset=chain_long", "model=tiny_chain")
    assert (cfg.dataset.chain_length, cfg.dataset.max_completion_length) == (8, 64)
    validate_train(cfg)
    with pytest.raises(
        ConfigError, match=r"dataset.test_split: got 'validation' \(allowed: test\)"
    ):
        validate_train(compose_config("dataset=arithmetic", "dataset.test_split=validation"))
    with pytest.raises(ConfigError, match=r"dataset.chain_length: must be >= 1"):
        validate_train(compose_config("dataset=chain", "dataset.chain_length=0"))
