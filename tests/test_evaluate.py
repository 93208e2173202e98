"""`tic-grpo eval`: metrics against hand-computed numbers, subset selection, prediction
assembly, checkpoint resolution on a fake run dir, and one-line errors for bad input."""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_module

from tic_grpo_cli import sampling as rollout
from tic_grpo_cli.config.schema import ConfigError, register_configs
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.evaluation.evaluate import evaluate, record_in_run
from tic_grpo_cli.evaluation.metrics import majority_vote, pass_at_k, pass_ks, summarize
from tic_grpo_cli.evaluation.model_eval import evaluate_model, length_limit_warning, select_examples
from tic_grpo_cli.evaluation.report import print_table

TINY = Path(__file__).resolve().parents[1] / "tic_grpo_cli" / "assets" / "tiny" / "config.json"


# --------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (4, 2, 1, 1 / 2),  # pass@1 is c/n
        (5, 1, 2, 2 / 5),  # 1 - C(4,2)/C(5,2) = 1 - 6/10
        (10, 3, 3, 17 / 24),  # 1 - C(7,3)/C(10,3) = 1 - 35/120
        (4, 1, 4, 1.0),  # k = n: any correct sample is drawn
        (4, 0, 4, 0.0),  # k = n, none correct
        (4, 0, 1, 0.0),  # none correct
        (4, 4, 1, 1.0),  # all correct
        (4, 3, 2, 1.0),  # n - c < k: every pair holds a correct one
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(200, 50) ~ 4.5e47 and C(1000, 500) overflows a float; exact integers as reference.
    assert pass_at_k(200, 37, 50) == pytest.approx(1 - math.comb(163, 50) / math.comb(200, 50))
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    assert pass_at_k(1000, 0, 500) == 0.0


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    "n,ks", [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]), (9, [1, 2, 4, 8, 9])]
)
def test_reported_ks_are_powers_of_two_and_n(n, ks):
    assert pass_ks(n) == ks


# --------------------------------------------------------------------------- maj@k


@pytest.mark.parametrize(
    "extracted,correct,expected",
    [
        (["3", "3", "5", None], [True, True, False, False], 1.0),
        (["5", "5", "3", "3", "5"], [False, False, True, True, False], 0.0),
        (["3", "5"], [True, False], 0.5),  # tie: credit in expectation over a random pick
        (["1", "2", "3"], [False, True, False], 1 / 3),
        ([None, None, None, "3"], [False, False, False, True], 1.0),  # None does not vote
        ([None, None], [False, False], 0.0),  # no vote at all counts as wrong
        (["7", "7", "7", "7"], [True] * 4, 1.0),
    ],
)
def test_majority_vote_hand_computed(extracted, correct, expected):
    assert majority_vote(extracted, correct) == pytest.approx(expected)


@pytest.mark.parametrize(
    "scorer,answer,completions",
    [
        ("gsm8k", "#### 1000", ["#### 1,000", "#### 1000", "#### 1000.0", "#### 999", "#### 999"]),
        (
            "math",
            "\\frac{1}{2}",
            ["\\boxed{\\frac{2}{4}}", "\\boxed{0.50}", "\\boxed{\\frac{1}{2}}"]
            + ["\\boxed{\\frac{1}{3}}"] * 2,
        ),
    ],
)
def test_majority_votes_on_normalised_answers(scorer, answer, completions):
    """Three spellings of the right answer outvote two of a wrong one (raw strings would
    split the three and elect the wrong one)."""
    from omegaconf import OmegaConf

    from tic_grpo_cli.config.schema import RewardConfig
    from tic_grpo_cli.data.rewards import Rewarder

    rewarder = Rewarder(OmegaConf.structured(RewardConfig(scorer=scorer)), "auto")
    scored = rewarder(completions, [{"answer": answer}] * len(completions))
    prediction = {
        **_prediction(scored.correct, scored.extracted),
        "normalized": scored.normalized,
        "timed_out": scored.timed_out,
    }
    assert summarize([prediction], len(completions))[f"maj@{len(completions)}"] == 1.0


def _prediction(correct, extracted, lengths=None, rewards=None):
    return {
        "correct": correct,
        "extracted": extracted,
        "rewards": rewards or [float(c) for c in correct],
        "lengths": lengths or [3] * len(correct),
    }


def test_summarize_two_examples_of_four_samples():
    predictions = [
        _prediction([True, True, False, False], ["7", "7", "8", None], lengths=[2, 3, 4, 5]),
        _prediction([False] * 4, [None, "1", "2", "2"], lengths=[1, 1, 1, 1]),
    ]
    m = summarize(predictions, 4)
    assert m["accuracy"] == pytest.approx((2 / 4 + 0) / 2)
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@2"] == pytest.approx((5 / 6 + 0) / 2)
    assert m["pass@4"] == pytest.approx((1 + 0) / 2)
    assert m["maj@4"] == pytest.approx((1 + 0) / 2)  # "7" wins the first, wrong "2" the second
    assert m["unparseable_fraction"] == pytest.approx(2 / 8)
    assert m["completion_length/mean"] == pytest.approx(18 / 8)
    assert m["reward/mean"] == pytest.approx(2 / 8)
    assert m["num_examples"] == 2
    assert m["avg@4"] == m["accuracy"]  # the paper's name for the mean over samples


def test_summarize_counts_timed_out_verifications():
    prediction = {
        **_prediction([False, True, False, False], [None, "1", None, "2"]),
        "normalized": [None, "1", None, "2"],
        "timed_out": [True, False, False, False],
    }
    m = summarize([prediction, {**prediction, "timed_out": [True, False, True, False]}], 4)
    assert m["timed_out_fraction"] == pytest.approx(3 / 8)
    assert m["unparseable_fraction"] == pytest.approx(4 / 8)  # timed-out ones included


def test_summarize_greedy_has_no_majority_vote():
    m = summarize([_prediction([True], ["1"]), _prediction([False], [None])], 1)
    assert m["accuracy"] == m["pass@1"] == 0.5
    assert not any(key.startswith(("maj@", "avg@")) for key in m)


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


def test_sampled_accuracy_is_named_avg_at_k_in_the_table(capsys):
    metrics = {"accuracy": 0.25, "avg@4": 0.25, "pass@1": 0.25, "pass@4": 0.5, "maj@4": 0.5}
    entries = [{"label": "step_4", "checkpoint": "c", "step": 4, "metrics": metrics}]
    print_table(entries, "t")
    header = next(line for line in capsys.readouterr().out.splitlines() if "checkpoint" in line)
    assert header.split("┃")[2].strip() == "avg@4"
    assert " acc " not in header and "pass@1" not in header


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

    cfg = compose_eval()
    model, tokenizer = load_model_and_tokenizer(cfg.model, torch.device("cpu"), torch.float32)
    task = build_task(cfg.dataset, tokenizer)
    first = evaluate_model(model, tokenizer, task, limit=16, max_new_tokens=8, batch_size=16)
    second = evaluate_model(model, tokenizer, task, limit=16, max_new_tokens=8, batch_size=16)
    assert first == second
    assert first[0]["num_examples"] == 16
    assert first[0]["accuracy"] > 0  # the shipped model is partly trained: scoring works


# --------------------------------------------------------------------------- the command


def compose_eval(*overrides: str, name: str = "eval"):
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose(name, overrides=list(overrides))


def _char_tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate([*specials, *"0123456789+-*= "])}
    # BPE without merges splits text into characters.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )


def _save_checkpoint(path: Path, seed: int, tokenizer) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    torch.save({"step": int(path.name.removeprefix("step_"))}, path / "trainer_state.pt")


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    """A training run dir with random-weight checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("run")
    tokenizer = _char_tokenizer()
    for step in (2, 4):
        _save_checkpoint(run / "checkpoints" / f"step_{step}", step, tokenizer)
    (run / "checkpoints" / "latest").write_text("step_4\n")
    return run


def _eval_overrides(run: Path, *extra: str) -> list[str]:
    return [f"checkpoint.path={run}", "eval.limit=6", "dataset.train_size=200", *extra]


def test_a_run_dir_is_evaluated_at_its_latest_checkpoint(fake_run, tmp_path):
    results = evaluate(compose_eval(*_eval_overrides(fake_run)), tmp_path)
    assert [r["step"] for r in results["results"]] == [4]
    assert results["results"][0]["checkpoint"] == str(fake_run / "checkpoints" / "step_4")
    assert results["dataset"]["num_evaluated"] == 6
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"] == results["metrics"]
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"prompt", "completions", "extracted", "rewards"} <= set(rows[0])


def own_data_eval(run: Path, tmp_path: Path, *extra: str):
    """An eval config of `run` on a dozen problems of one's own (mine.jsonl), and its path."""
    data = tmp_path / "mine.jsonl"
    rows = [{"question": f"{a}+{a + 1}=", "answer": str(2 * a + 1)} for a in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_eval(
        f"checkpoint.path={run}",
        "dataset=jsonl",
        f"dataset.path={data}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        *extra,
    )
    return cfg, data


def test_a_dozen_problem_file_of_ones_own_is_evaluated_whole(fake_run, tmp_path):
    # dataset=jsonl holds out test_size=100 prompts by default, more than the file has.
    cfg, data = own_data_eval(fake_run, tmp_path, "eval.max_new_tokens=4")
    results = evaluate(cfg, tmp_path / "eval")
    assert results["dataset"]["num_evaluated"] == 12
    rows = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    questions = [json.loads(line)["question"] for line in data.read_text().splitlines()]
    assert [json.loads(row)["prompt"] for row in rows] == questions


def test_a_data_error_comes_before_any_model_loads(fake_run, tmp_path, monkeypatch):
    class NoModel:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr("tic_grpo_cli.models.AutoModelForCausalLM", NoModel)
    cfg, _ = own_data_eval(fake_run, tmp_path, "dataset.prompt_field=problem")
    with pytest.raises(UserError, match=r"dataset\.prompt_field: no field 'problem'"):
        evaluate(cfg, tmp_path / "eval")


def test_all_checkpoints_draw_the_curve_and_log_to_the_run(fake_run, tmp_path):
    cfg = compose_eval(*_eval_overrides(fake_run, "checkpoint.all=true", "eval.log_to_run=true"))
    results = evaluate(cfg, tmp_path / "a")
    assert [r["step"] for r in results["results"]] == [2, 4]
    assert (tmp_path / "a" / "accuracy_vs_step.png").stat().st_size > 0
    evaluate(cfg, tmp_path / "b")  # the same setting again replaces, not duplicates, the rows
    rows = [json.loads(line) for line in (fake_run / "eval_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all("eval/accuracy" in r and r["eval_dir"] == str(tmp_path / "b") for r in rows)


def test_answers_cut_at_the_length_limit_are_warned_about_once(fake_run, tmp_path, caplog):
    # One new token: the random model almost never ends with EOS, every answer is cut.
    cfg = compose_eval(*_eval_overrides(fake_run, "checkpoint.all=true", "eval.max_new_tokens=1"))
    with caplog.at_level(logging.WARNING, logger="tic_grpo"):
        results = evaluate(cfg, tmp_path)
    assert all(r["metrics"]["truncated_fraction"] > 0.5 for r in results["results"])
    warnings = [r.message for r in caplog.records if "token limit" in r.message]
    assert len(warnings) == 1 and "eval.max_new_tokens" in warnings[0]


def test_run_rows_of_another_setting_are_kept(tmp_path):
    row = {"step": 2, "eval/accuracy": 0.5}
    record_in_run(tmp_path, row, {"split": "test"}, "ck", tmp_path)
    record_in_run(tmp_path, {**row, "eval/accuracy": 0.7}, {"split": "test"}, "ck", tmp_path)
    record_in_run(tmp_path, row, {"split": "train"}, "ck", tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "eval_metrics.jsonl").read_text().splitlines()]
    assert [(r["setting"]["split"], r["eval/accuracy"]) for r in rows] == [
        ("test", 0.7),
        ("train", 0.5),
    ]


def test_a_checkpoint_without_tokenizer_is_a_user_error(fake_run, tmp_path):
    broken = tmp_path / "checkpoints" / "step_9"
    shutil.copytree(fake_run / "checkpoints" / "step_2", broken)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).unlink()
    with pytest.raises(UserError, match="has no tokenizer"):
        evaluate(compose_eval(f"checkpoint.path={broken}"), tmp_path / "eval")


def test_a_directory_that_is_not_a_checkpoint_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a checkpoint"):
        evaluate(compose_eval(f"checkpoint.path={tmp_path}"), tmp_path / "eval")


def test_all_on_a_single_checkpoint_says_what_to_give(fake_run, tmp_path):
    step = fake_run / "checkpoints" / "step_2"
    with pytest.raises(UserError, match="expects a training run dir"):
        evaluate(compose_eval(f"checkpoint.path={step}", "checkpoint.all=true"), tmp_path)


def test_all_without_a_path_fails_validation(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint\.all"):
        evaluate(compose_eval("checkpoint.all=true"), tmp_path)


def test_console_script_reports_a_missing_checkpoint_in_one_line(tmp_path):
    script = shutil.which("tic-grpo", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "tic_grpo_cli"]
    proc = subprocess.run(
        [*command, "eval", "checkpoint=/nonexistent"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_evaluation_during_training_warns_once_naming_the_trainer_key(tmp_path, caplog):
    from tic_grpo_cli.train.loop import train

    # One token per completion: no arithmetic answer ends in time. Evaluations at 0, 1, 2.
    cfg = compose_eval(
        "trainer.max_steps=2", "trainer.rollout_batch_size=2", "trainer.group_size=2",
        "trainer.minibatch_size=2", "trainer.eval_every=1", "trainer.eval_limit=4",
        "trainer.save_every=0", "trainer.log_samples_every=0", "dataset.max_completion_length=1",
        "wandb.mode=disabled", "hardware.num_threads=1", name="train",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="tic_grpo"):
        train(cfg, tmp_path)
    warnings = [r.message for r in caplog.records if "token limit" in r.message]
    assert len(warnings) == 1 and "raise trainer.max_completion_length" in warnings[0]


def test_a_run_with_one_checkpoint_says_how_to_get_a_curve(tmp_path, caplog):
    from tic_grpo_cli.evaluation.targets import resolve_targets

    run = tmp_path / "run"
    _save_checkpoint(run / "checkpoints" / "step_60", 60, _char_tokenizer())
    selection = compose_eval(f"checkpoint.path={run}", "checkpoint.all=true").checkpoint
    with caplog.at_level(logging.WARNING, logger="tic_grpo"):
        assert [t.step for t in resolve_targets(selection, "tiny")] == [60]
    assert "trainer.save_every" in caplog.text and "step_60" in caplog.text
