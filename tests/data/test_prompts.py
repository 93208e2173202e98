"""Prompts exactly as the model must see them: bare text, chat templates, system prompts."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config
from tests.data.test_embedded import small
from tic_grpo_cli.config.validation import validate_common
from tic_grpo_cli.data import arithmetic, build_task
from tic_grpo_cli.data.prompts import PromptRenderer
from tic_grpo_cli.errors import UserError


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


def test_use_chat_template_true_needs_a_template():
    with pytest.raises(UserError, match="use_chat_template"):
        build_task(small("arithmetic", use_chat_template="true"), tokenizer=None)


def test_literal_braces_in_templates_survive():
    cfg = small("arithmetic", prompt_template=r"{prompt} Put it in \boxed{}. {{prompt}}")
    example = build_task(cfg).test[0]
    assert example["prompt"] == example["question"] + r" Put it in \boxed{}. {prompt}"


@pytest.mark.parametrize(
    "value,chat",
    [("true", True), ("True", True), ("auto", True), ("false", False), ("False", False)],
)
def test_use_chat_template_accepts_a_yaml_bool(value, chat):
    # `true` on the command line or in YAML is a bool, which the str field stores as "True".
    cfg = compose_config("dataset=gsm8k", f"dataset.use_chat_template={value}")
    validate_common(cfg)
    text = PromptRenderer(cfg.dataset, ChatTokenizer(), ["question"], "gsm8k")("1+1?", {})
    if chat:
        assert text.startswith("<user>1+1?\nLet's think") and text.endswith("<assistant>")
    else:
        assert text.startswith("1+1?\nLet's think") and "<user>" not in text
