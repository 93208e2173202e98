"""Embedded tasks (arithmetic, countdown): deterministic, disjoint splits of the requested size."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tic_grpo_cli.config.schema import ConfigError, DatasetConfig
from tic_grpo_cli.config.validation import validate_common
from tic_grpo_cli.data import build_task, countdown
from tic_grpo_cli.errors import UserError


def dataset_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), overrides)


def small(kind: str, **overrides):
    base = {"kind": kind, "train_size": 300, "test_size": 50}
    if kind == "countdown":
        base["operators"] = ["+", "-", "*", "/"]
    return dataset_cfg(**{**base, **overrides})


@pytest.mark.parametrize("kind", ["arithmetic", "countdown"])
def test_generation_is_deterministic_in_the_seed(kind):
    first, again = build_task(small(kind)), build_task(small(kind))
    other = build_task(small(kind, seed=1))
    assert list(first.train) == list(again.train)
    assert list(first.test) == list(again.test)
    assert [e["question"] for e in first.train] != [e["question"] for e in other.train]


@pytest.mark.parametrize("kind", ["arithmetic", "countdown"])
def test_train_and_test_are_disjoint_across_seeds(kind):
    key = (
        (lambda e: e["question"])
        if kind == "arithmetic"
        else (lambda e: (tuple(sorted(e["numbers"])), e["target"]))
    )
    train = {key(e) for seed in (0, 1) for e in build_task(small(kind, seed=seed)).train}
    test = {key(e) for seed in (0, 1) for e in build_task(small(kind, seed=seed)).test}
    assert train and test and not train & test


def test_splits_hold_distinct_problems_of_the_requested_size():
    task = build_task(small("countdown"))
    assert len(task.train) == 300 and len(task.test) == 50
    keys = [(tuple(sorted(e["numbers"])), e["target"]) for e in task.train]
    assert len(set(keys)) == len(keys)


def test_arithmetic_scores_exactly_by_default():
    task = build_task(small("arithmetic"))
    example = {"answer": "122"}
    result = task.score(["122", " 122\n", "1220", "122 ", "12", ""], [example] * 6)
    assert result.correct == [True, True, False, True, False, False]
    assert result.rewards == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert result.terms == {"correct": result.rewards}


def test_countdown_examples_carry_numbers_target_and_a_working_solution():
    task = build_task(small("countdown", prompt_template="Use {numbers} to make {target}."))
    for example in task.test:
        assert example["prompt"] == f"Use {example['numbers']} to make {example['target']}."
        assert example["answer"] == str(example["target"])
        assert 1 <= example["target"] <= 100 and len(example["numbers"]) == 3
        assert task.score([example["solution"]], [example]).correct == [True]


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"train_size": 9000, "digits": 1}, r"dataset\.train_size: .*lower the size"),
        ({"operators": ["/"]}, r"dataset\.operators"),
        ({"prompt_template": "{prompt} {nope}"}, r"prompt_template: no field 'nope'"),
        ({"prompt_template": "{prompt} = {answer}"}, r"prompt_template: \{answer\}"),
    ],
)
def test_bad_embedded_config_fails_in_one_line(overrides, match):
    with pytest.raises(UserError, match=match) as err:
        build_task(small("arithmetic", **overrides))
    assert "\n" not in str(err.value)


def test_countdown_space_too_small_is_a_user_error():
    cfg = small("countdown", num_numbers=2, max_number=2, max_target=3, train_size=50)
    with pytest.raises(UserError, match=r"dataset\.train_size: only \d+ distinct"):
        build_task(cfg)


def test_countdown_generator_rejects_unknown_operators():
    with pytest.raises(ValueError, match="unknown operator"):
        countdown.generate("train", 5, operators=("^",))


@pytest.mark.parametrize("option", ["arithmetic", "countdown"])
def test_shipped_embedded_configs_build(option):
    cfg = compose_config(f"dataset={option}", "dataset.train_size=200", "dataset.test_size=20")
    validate_common(cfg)
    task = build_task(cfg.dataset)
    example = task.train[0]
    assert example["prompt"] == example["question"]
    assert len(example["answer"]) < cfg.dataset.max_completion_length


@pytest.mark.parametrize(
    "override,key",
    [
        ("dataset.operators=[+,/]", "dataset.operators"),
        ("dataset.reward.scorer=fuzzy", "dataset.reward.scorer"),
        ("dataset.reward.format_weight=0.5", "dataset.reward.format_weight"),
        ("dataset.reward.format_pattern='('", "dataset.reward.format_pattern"),
        ("dataset.reward.fn=no_colon", "dataset.reward.fn"),
        ("dataset.use_chat_template=maybe", "dataset.use_chat_template"),
        ("dataset.kind=hf", "dataset.path"),
    ],
)
def test_dataset_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_common(compose_config("dataset=arithmetic", override))
