"""evaluate_model: the seeded subset, prediction assembly, and its warnings and errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import compose_config
from tic_grpo_cli import sampling as rollout
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.evaluation.model_eval import evaluate_model, length_limit_warning, select_examples

TINY = Path(__file__).resolve().parents[2] / "tic_grpo_cli" / "assets" / "tiny" / "config.json"


# --------------------------------------------------------------------------- subsets


def test_limit_picks_a_seeded_nested_subset_in_split_order():
    examples = [{"prompt": str(i)} for i in range(100)]
    a = [i for i, _ in select_examples(examples, 10, seed=0)]
    assert a == sorted(a) and len(set(a)) == 10
    assert a == [i for i, _ in select_examples(examples, 10, seed=0)]
    assert set(a) <= {i for i, _ in select_examples(examples, 30, seed=0)}
    assert a != [i for i, _ in select_examples(examples, 10, seed=1)]
    assert [i for i, _ in select_examples(examples, 500, seed=0)] == list(range(100))
    assert [i for i, _ in select_examples(examples, None, seed=3)] == list(range(100))


# --------------------------------------------------------------------------- evaluate_model


class FakeTask:
    """Prompts `q<i>`; the answer is `i`; a completion is scored by its first word."""

    def __init__(self, size: int):
        self.test = [{"prompt": f"q{i}", "answer": str(i)} for i in range(size)]

    def split(self, name):
        if name != "test":
            raise KeyError(f"no split {name!r}")
        return self.test

    def score(self, completions, examples):
        words = [c.split()[0] if c.split() else "" for c in completions]
        extracted = [w if w.isdigit() else None for w in words]
        correct = [a == e["answer"] for a, e in zip(extracted, examples, strict=True)]
        rewards = [float(c) for c in correct]
        return SimpleNamespace(
            extracted=extracted,
            normalized=extracted,
            timed_out=[False] * len(extracted),
            correct=correct,
            rewards=rewards,
            terms={},
        )


def fake_generate(calls):
    """Stands in for rollout.generate: the k-th repeat of prompt q<i> answers i if k is even."""

    def generate(model, tokenizer, prompts, max_new_tokens, batch_size=None, **sampling):
        calls.append(len(prompts))
        seen: dict[str, int] = {}
        texts = []
        for p in prompts:
            k = seen[p] = seen.get(p, -1) + 1
            texts.append(p[1:] if k % 2 == 0 else "x")
        mask = torch.ones(len(prompts), 2, dtype=torch.bool)
        # The wrong ("x") completions are the ones cut at the length limit.
        finished = torch.tensor([text != "x" for text in texts])
        return SimpleNamespace(texts=texts, completion_mask=mask, finished=finished)

    return generate


def test_evaluate_model_assembles_predictions_and_metrics(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(rollout, "generate", fake_generate(calls))
    metrics, preds = evaluate_model(
        None, None, FakeTask(5), num_samples=4, temperature=1.0, batch_size=8
    )
    assert calls == [8, 8, 4]  # two examples x 4 samples per call
    assert [p["index"] for p in preds] == [0, 1, 2, 3, 4]
    assert preds[3]["completions"] == ["3", "x", "3", "x"]
    assert preds[3]["extracted"] == ["3", None, "3", None]
    assert preds[3]["correct"] == [True, False, True, False]
    assert metrics["accuracy"] == 0.5
    assert metrics["pass@2"] == pytest.approx(5 / 6)
    assert metrics["maj@4"] == 1.0
    assert metrics["unparseable_fraction"] == 0.5
    assert metrics["timed_out_fraction"] == 0.0
    assert metrics["num_examples"] == 5
    assert preds[3]["finished"] == [True, False, True, False]
    assert metrics["truncated_fraction"] == 0.5  # 10 of 20 completions cut


def test_most_completions_cut_at_the_limit_is_a_warning_naming_the_key():
    assert length_limit_warning({"truncated_fraction": 0.5}, 8, "eval.max_new_tokens") is None
    warning = length_limit_warning({"truncated_fraction": 0.75}, 8, "eval.max_new_tokens")
    assert warning is not None and "\n" not in warning
    assert "75% of completions hit the 8-token limit" in warning
    assert "raise eval.max_new_tokens" in warning


def test_evaluate_model_on_an_empty_split_is_a_user_error():
    with pytest.raises(UserError, match="empty"):
        evaluate_model(None, None, FakeTask(0))


def test_unknown_split_is_a_user_error():
    with pytest.raises(UserError, match=r"eval\.split='dev'"):
        evaluate_model(None, None, FakeTask(3), split="dev")


@pytest.mark.skipif(
    not TINY.is_file(), reason="tiny model assets not built yet (scripts/build_tiny_model.py)"
)
def test_greedy_eval_of_the_tiny_model_is_deterministic():
    from tic_grpo_cli.data import build_task
    from tic_grpo_cli.models import load_model_and_tokenizer

    cfg = compose_config(name="eval")
    model, tokenizer = load_model_and_tokenizer(cfg.model, torch.device("cpu"), torch.float32)
    task = build_task(cfg.dataset, tokenizer)
    first = evaluate_model(model, tokenizer, task, limit=16, max_new_tokens=8, batch_size=16)
    second = evaluate_model(model, tokenizer, task, limit=16, max_new_tokens=8, batch_size=16)
    assert first == second
    assert first[0]["num_examples"] == 16
    assert first[0]["accuracy"] > 0  # the shipped model is partly trained: scoring works
