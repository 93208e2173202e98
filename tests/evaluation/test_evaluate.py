"""`tic-grpo eval`: checkpoint resolution on a fake run dir, results written, and one-line
errors for bad input."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import SMALL_RUN, compose_config
from tic_grpo_cli.config.schema import ConfigError
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.evaluation.evaluate import evaluate, record_in_run
from tic_grpo_cli.train.loop import train

# --------------------------------------------------------------------------- the command


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
    results = evaluate(compose_config(*_eval_overrides(fake_run), name="eval"), tmp_path)
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
    cfg = compose_config(
        f"checkpoint.path={run}",
        "dataset=jsonl",
        f"dataset.path={data}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        *extra,
        name="eval",
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
    cfg = compose_config(
        *_eval_overrides(fake_run, "checkpoint.all=true", "eval.log_to_run=true"), name="eval"
    )
    results = evaluate(cfg, tmp_path / "a")
    assert [r["step"] for r in results["results"]] == [2, 4]
    assert (tmp_path / "a" / "accuracy_vs_step.png").stat().st_size > 0
    evaluate(cfg, tmp_path / "b")  # the same setting again replaces, not duplicates, the rows
    rows = [json.loads(line) for line in (fake_run / "eval_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all("eval/accuracy" in r and r["eval_dir"] == str(tmp_path / "b") for r in rows)


def test_answers_cut_at_the_length_limit_are_warned_about_once(fake_run, tmp_path, caplog):
    # One new token: the random model almost never ends with EOS, every answer is cut.
    cfg = compose_config(
        *_eval_overrides(fake_run, "checkpoint.all=true", "eval.max_new_tokens=1"), name="eval"
    )
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
        evaluate(compose_config(f"checkpoint.path={broken}", name="eval"), tmp_path / "eval")


def test_a_directory_that_is_not_a_checkpoint_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a checkpoint"):
        evaluate(compose_config(f"checkpoint.path={tmp_path}", name="eval"), tmp_path / "eval")


def test_all_on_a_single_checkpoint_says_what_to_give(fake_run, tmp_path):
    step = fake_run / "checkpoints" / "step_2"
    with pytest.raises(UserError, match="expects a training run dir"):
        evaluate(
            compose_config(f"checkpoint.path={step}", "checkpoint.all=true", name="eval"), tmp_path
        )


def test_all_without_a_path_fails_validation(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint\.all"):
        evaluate(compose_config("checkpoint.all=true", name="eval"), tmp_path)


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


def test_a_run_with_one_checkpoint_says_how_to_get_a_curve(tmp_path, caplog):
    from tic_grpo_cli.evaluation.targets import resolve_targets

    run = tmp_path / "run"
    _save_checkpoint(run / "checkpoints" / "step_60", 60, _char_tokenizer())
    selection = compose_config(
        f"checkpoint.path={run}", "checkpoint.all=true", name="eval"
    ).checkpoint
    with caplog.at_level(logging.WARNING, logger="tic_grpo"):
        assert [t.step for t in resolve_targets(selection, "tiny")] == [60]
    assert "trainer.save_every" in caplog.text and "step_60" in caplog.text


def test_eval_of_all_checkpoints_draws_a_curve_of_the_kept_ones(tmp_path):
    # Saved at 2, 4, 6, 8; kept: the newest and the first of every 4 steps (2, 4, 8).
    train(compose_config(*SMALL_RUN, "trainer.save_every=2", "trainer.eval_every=0", "trainer.keep_last=1",
                   "trainer.keep_every=4"), tmp_path / "run")  # fmt: skip
    from tic_grpo_cli.evaluation.evaluate import evaluate

    cfg = compose_config(
        f"checkpoint.path={tmp_path / 'run'}", "checkpoint.all=true", "eval.limit=2", name="eval"
    )
    results = evaluate(cfg, tmp_path / "eval")
    assert [r["step"] for r in results["results"]] == [2, 4, 8]
