"""Embedded tasks: deterministic, disjoint splits; prompts exactly as the model must see them."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tic_grpo_cli.config.schema import ConfigError, DatasetConfig, register_configs
from tic_grpo_cli.config.validation import validate_common
from tic_grpo_cli.data import Examples, arithmetic, build_task, countdown
from tic_grpo_cli.data.prompts import PromptRenderer
from tic_grpo_cli.errors import UserError


def dataset_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), overrides)


def small(kind: str, **overrides):
    base = {"kind": kind, "train_size": 300, "test_size": 50}
    if kind == "countdown":
        base["operators"] = ["+", "-", "*", "/"]
    return dataset_cfg(**{**base, **overrides})


class ChatTokenizer:
    """The tokenizer methods the data layer calls, with a visible template: render, and
    encode for the prompt-length checks (one id per character)."""

    chat_template: str | None = "fake"
    model_max_length = 10**30  # no limit, as many tokenizers say
    all_special_tokens = ("<s>",)

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        body = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return body + "<assistant>"

    def __call__(self, texts, add_special_tokens=True):
        first = [0] if add_special_tokens else []
        return {"input_ids": [first + [ord(c) for c in text] for text in texts]}


class PlainTokenizer(ChatTokenizer):
    chat_template = None


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


def test_arithmetic_prompt_is_the_bare_problem_without_a_tokenizer_template():
    cfg = small("arithmetic", digits=3, operators=["+", "-", "*"])
    example = build_task(cfg, tokenizer=PlainTokenizer()).train[0]
    problem = arithmetic.Problem(example["question"], example["answer"])
    assert example["prompt"] == problem.question
    assert problem.question.endswith("=")
    a, op, b = next(
        (problem.question[:i], c, problem.question[i + 1 : -1])
        for i, c in enumerate(problem.question)
        if i > 0 and c in "+-*"
    )
    assert int(problem.answer) == arithmetic.OPERATORS[op](int(a), int(b))
    assert max(len(a), len(b)) <= 3


def test_arithmetic_scores_exactly_by_default():
    task = build_task(small("arithmetic"))
    example = {"answer": "122"}
    result = task.score(["122", " 122\n", "1220", "122 ", "12", ""], [example] * 6)
    assert result.correct == [True, True, False, True, False, False]
    assert result.rewards == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert result.terms == {"correct": result.rewards}


def test_chat_template_applies_the_user_template_when_the_tokenizer_has_one():
    cfg = small("arithmetic", prompt_template="What is {prompt}? Answer with the number only.")
    example = build_task(cfg, ChatTokenizer()).test[0]
    question = example["question"]
    assert example["prompt"] == (
        f"<user>What is {question}? Answer with the number only.<assistant>"
    )
    plain = build_task(small("arithmetic", use_chat_template="false"), ChatTokenizer())
    assert plain.test[0]["prompt"] == question


def test_system_prompt_becomes_a_system_turn_or_a_leading_paragraph():
    cfg = small("arithmetic", system_prompt="Be brief.")
    assert build_task(cfg, ChatTokenizer()).test[0]["prompt"].startswith("<system>Be brief.<user>")
    plain = build_task(cfg).test[0]
    assert plain["prompt"] == f"Be brief.\n\n{plain['question']}"


def test_countdown_examples_carry_numbers_target_and_a_working_solution():
    task = build_task(small("countdown", prompt_template="Use {numbers} to make {target}."))
    for example in task.test:
        assert example["prompt"] == f"Use {example['numbers']} to make {example['target']}."
        assert example["answer"] == str(example["target"])
        assert 1 <= example["target"] <= 100 and len(example["numbers"]) == 3
        assert task.score([example["solution"]], [example]).correct == [True]


def test_examples_index_like_a_sequence():
    examples = build_task(small("arithmetic")).test
    assert isinstance(examples, Examples)
    assert examples[-1] == examples[len(examples) - 1]
    assert examples[:3] == [examples[0], examples[1], examples[2]]
    with pytest.raises(IndexError):
        examples[len(examples)]


def test_unknown_split_lists_the_existing_ones():
    task = build_task(small("arithmetic"))
    assert task.split("train") is task.train
    with pytest.raises(UserError, match=r"'validation'.*splits: train, test"):
        task.split("validation")


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


def test_use_chat_template_true_needs_a_template():
    with pytest.raises(UserError, match="use_chat_template"):
        build_task(small("arithmetic", use_chat_template="true"), tokenizer=None)


def test_literal_braces_in_templates_survive():
    cfg = small("arithmetic", prompt_template=r"{prompt} Put it in \boxed{}. {{prompt}}")
    example = build_task(cfg).test[0]
    assert example["prompt"] == example["question"] + r" Put it in \boxed{}. {prompt}"


def test_countdown_space_too_small_is_a_user_error():
    cfg = small("countdown", num_numbers=2, max_number=2, max_target=3, train_size=50)
    with pytest.raises(UserError, match=r"dataset\.train_size: only \d+ distinct"):
        build_task(cfg)


def test_countdown_generator_rejects_unknown_operators():
    with pytest.raises(ValueError, match="unknown operator"):
        countdown.generate("train", 5, operators=("^",))


def compose_dataset(option: str, *overrides: str):
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose("train", overrides=[f"dataset={option}", *overrides])


@pytest.mark.parametrize("option", ["arithmetic", "countdown"])
def test_shipped_embedded_configs_build(option):
    cfg = compose_dataset(option, "dataset.train_size=200", "dataset.test_size=20")
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
        validate_common(compose_dataset("arithmetic", override))


@pytest.mark.parametrize(
    "value,chat",
    [("true", True), ("True", True), ("auto", True), ("false", False), ("False", False)],
)
def test_use_chat_template_accepts_a_yaml_bool(value, chat):
    # `true` on the command line or in YAML is a bool, which the str field stores as "True".
    cfg = compose_dataset("gsm8k", f"dataset.use_chat_template={value}")
    validate_common(cfg)
    text = PromptRenderer(cfg.dataset, ChatTokenizer(), ["question"], "gsm8k")("1+1?", {})
    if chat:
        assert text.startswith("<user>1+1?\nLet's think") and text.endswith("<assistant>")
    else:
        assert text.startswith("1+1?\nLet's think") and "<user>" not in text


def test_data_modules_do_not_import_each_other_in_a_circle():
    # Every import of a sibling, at the top or inside a function: a cycle means one module
    # cannot be read (or loaded) without the other.
    import ast
    from pathlib import Path

    import tic_grpo_cli.data as package

    folder = Path(package.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    imports: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((folder / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "tic_grpo_cli.data":
                found |= {alias.name for alias in node.names} & modules
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "tic_grpo_cli.data."
            ):
                found.add(node.module.rsplit(".", 1)[1])
        imports[name] = found

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in imports[start] - seen:
            if nxt == target or reaches(nxt, target, seen | {nxt}):
                return True
        return False

    assert {"task", "hf", "embedded"} <= modules
    assert "task" in imports["hf"]  # the walk sees the imports it must judge
    circles = sorted(m for m in modules if reaches(m, m, set()))
    assert circles == []
