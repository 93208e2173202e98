"""Prompts on a real model's terms: the ids a chat template gives, limits checked at load
(prompt length, the model's context, a template that refuses a prompt), and the special
tokens a reward may see. Expected values come from the tokenizer and the model config."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tests.conftest import SMALL_RUN, compose_config
from tic_grpo_cli.assets import TINY_DIR
from tic_grpo_cli.config.schema import DatasetConfig, ModelConfig
from tic_grpo_cli.data import build_task
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.models import load_model_and_tokenizer, load_tokenizer
from tic_grpo_cli.sampling import generate

CPU = torch.device("cpu")
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|system|>", "<|assistant|>"]
# Llama-3, Gemma and DeepSeek-R1-Distill templates open with the BOS token themselves.
BOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Gemma's refuses a system turn.
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}" + BOS_TEMPLATE
)


def char_tokenizer(chat_template: str | None = BOS_TEMPLATE) -> PreTrainedTokenizerFast:
    """A character-level tokenizer that prepends <bos> when it encodes, as Llama's does."""
    chars = sorted(set(string.printable) - set(string.whitespace) | {" ", "\n"})
    vocab = {token: i for i, token in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left",
        additional_special_tokens=["<|user|>", "<|system|>", "<|assistant|>"],
    )  # fmt: skip
    tokenizer.chat_template = chat_template
    return tokenizer


def random_model(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def dataset_cfg(**overrides):
    base = {"kind": "arithmetic", "train_size": 20, "test_size": 5}
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), {**base, **overrides})


def jsonl_cfg(tmp_path: Path, rows: list[dict], **overrides):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"kind": "hf", "path": str(path), "cache_dir": str(tmp_path / "cache"),
            "test_split": None, "test_size": 2}  # fmt: skip
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), {**base, **overrides})


def tiny_tokenizer():
    return load_tokenizer(OmegaConf.structured(ModelConfig()))


# ------------------------------------------------------------------ one BOS


def test_a_chat_prompt_is_fed_as_apply_chat_template_tokenizes_it():
    tokenizer = char_tokenizer()
    example = build_task(dataset_cfg(system_prompt="Add."), tokenizer).train[0]
    gen = generate(random_model(len(tokenizer)), tokenizer, [example["prompt"], "7+8="], 1,
                   temperature=0)  # fmt: skip
    messages = [{"role": "system", "content": "Add."},
                {"role": "user", "content": example["question"]}]  # fmt: skip
    want = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert gen.prompt_ids[0][gen.prompt_mask[0]].tolist() == want["input_ids"]
    assert want["input_ids"].count(tokenizer.bos_token_id) == 1
    # Plain text still gets the BOS the tokenizer adds (the tiny model is trained so).
    assert gen.prompt_ids[1][gen.prompt_mask[1]].tolist() == tokenizer("7+8=")["input_ids"]


# ------------------------------------------------------------------ limits at load


def test_over_long_prompts_are_refused_at_load_with_a_count(tmp_path):
    tokenizer = tiny_tokenizer()
    rows = [{"question": f"{i}+{i}=" + " " * (20 if i in (3, 7) else 0), "answer": 2 * i}
            for i in range(12)]  # fmt: skip
    cfg = jsonl_cfg(tmp_path, rows, max_prompt_length=12)
    train = build_task(jsonl_cfg(tmp_path, rows, max_prompt_length=None), tokenizer).train
    lengths = [len(tokenizer(e["prompt"])["input_ids"]) for e in train]
    over = [i for i, n in enumerate(lengths) if n > 12]
    assert len(over) == 2
    longest = max(over, key=lambda i: lengths[i])
    with pytest.raises(UserError) as err:
        build_task(cfg, tokenizer)
    assert str(err.value) == (
        f"dataset.max_prompt_length=12: 2 of {len(train)} train prompts are longer (longest "
        f"{lengths[longest]} tokens, row {longest}); raise dataset.max_prompt_length, shorten "
        "them, or set dataset.skip_bad_rows=true to skip them"
    )
    task = build_task(jsonl_cfg(tmp_path, rows, max_prompt_length=12, skip_bad_rows=True),
                      tokenizer)  # fmt: skip
    assert len(task.train) == len(train) - 2 and task.skipped["train"] == 2


def test_prompt_and_completion_must_fit_the_models_context(tmp_path):
    # A tokenizer that states no limit (SmolLM2's says 1e30): the context is the config's.
    shutil.copytree(TINY_DIR, tmp_path, dirs_exist_ok=True)
    for name, key, value in (("tokenizer_config.json", "model_max_length", None),
                             ("config.json", "max_position_embeddings", 64)):  # fmt: skip
        config = json.loads((tmp_path / name).read_text())
        config.pop(key)
        (tmp_path / name).write_text(
            json.dumps(config if value is None else {**config, key: value})
        )
    tokenizer = load_tokenizer(OmegaConf.structured(ModelConfig(name_or_path=str(tmp_path))))
    context = 64
    task = build_task(dataset_cfg(max_prompt_length=None), None)
    longest = max(len(tokenizer(e["prompt"])["input_ids"]) for e in task.train)
    fits = build_task(dataset_cfg(max_completion_length=context - longest), tokenizer)
    assert len(fits.train) == 20
    with pytest.raises(UserError, match=(
        rf"^dataset\.max_completion_length={context - longest + 1}: the longest train prompt "
        rf"\({longest} tokens\) plus {context - longest + 1} completion tokens exceed the "
        rf"model's context of {context} tokens")):  # fmt: skip
        build_task(dataset_cfg(max_completion_length=context - longest + 1), tokenizer)
    # What a run generates is trainer.max_completion_length, which may be set apart.
    from tic_grpo_cli.train.loop import train

    over = f"trainer.max_completion_length={context - longest + 1}"
    with pytest.raises(UserError, match=(
        rf"^{over}: .* lower trainer\.max_completion_length to {context - longest}, ")):  # fmt: skip
        train(compose_config(*SMALL_RUN, f"model.name_or_path={tmp_path}", over), tmp_path / "run")


def test_trainer_max_prompt_length_points_to_the_dataset_key():
    from tic_grpo_cli.config import overrides
    from tic_grpo_cli.config.schema import register_configs
    from tic_grpo_cli.config.validation import validate_train

    register_configs()
    with pytest.raises(UserError, match=r"did you mean dataset\.max_prompt_length"):
        overrides.check("train", ["trainer.max_prompt_length=300"], validate_train)


# ------------------------------------------------------------------ chat templates fail early


def test_a_template_that_refuses_a_system_turn_fails_at_task_build():
    with pytest.raises(UserError) as err:
        build_task(dataset_cfg(system_prompt="Be brief."), char_tokenizer(NO_SYSTEM_TEMPLATE))
    message = str(err.value)
    assert message.startswith("dataset.system_prompt: the chat template of ")
    assert "System role not supported" in message and "\n" not in message


def test_the_template_error_comes_before_the_model_loads(tmp_path, monkeypatch):
    from tic_grpo_cli.train.loop import train

    class NoModel:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise AssertionError("the model was loaded before the prompts were checked")

    model_dir = tmp_path / "gemma-like"
    shutil.copytree(TINY_DIR, model_dir)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = NO_SYSTEM_TEMPLATE
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    monkeypatch.setattr("tic_grpo_cli.models.AutoModelForCausalLM", NoModel)
    cfg = compose_config(
        *SMALL_RUN, f"model.name_or_path={model_dir}", "dataset.system_prompt=Be brief."
    )
    with pytest.raises(UserError, match=r"^dataset\.system_prompt: .*System role not supported"):
        train(cfg, tmp_path / "run")


# ------------------------------------------------------------------ special tokens to rewards


def test_rewards_see_special_tokens_when_asked():
    from tic_grpo_cli.evaluation.model_eval import evaluate_model

    model, tokenizer = load_model_and_tokenizer(OmegaConf.structured(ModelConfig()), CPU,
                                                torch.float32)  # fmt: skip
    prompts = ["1+2=", "37+85="]
    kept = generate(model, tokenizer, prompts, 8, temperature=0, skip_special_tokens=False)
    default = generate(model, tokenizer, prompts, 8, temperature=0)
    for i, (ids, mask) in enumerate(zip(kept.completion_ids, kept.completion_mask, strict=True)):
        tokens = ids[mask].tolist()
        assert kept.texts[i] == tokenizer.decode(tokens, skip_special_tokens=False)
        assert default.texts[i] == tokenizer.decode(tokens, skip_special_tokens=True)
    assert any(text.endswith(tokenizer.eos_token) for text in kept.texts)

    task = build_task(dataset_cfg(), tokenizer)
    _, predictions = evaluate_model(model, tokenizer, task, limit=4, skip_special_tokens=False)
    finished = [
        c for p in predictions for c, f in zip(p["completions"], p["finished"], strict=True) if f
    ]
    assert finished and all(c.endswith(tokenizer.eos_token) for c in finished)


@pytest.mark.parametrize("skip", [True, False])
def test_training_rewards_see_the_completions_as_the_option_decodes_them(skip, monkeypatch):
    from tic_grpo_cli.train.rollout import collect_rollout

    cfg = compose_config(*SMALL_RUN, f"dataset.reward.skip_special_tokens={str(skip).lower()}")
    model, tokenizer = load_model_and_tokenizer(cfg.model, CPU, torch.float32)
    task = build_task(cfg.dataset, tokenizer)
    seen: list[str] = []
    score = task.score

    def recording(texts, examples):
        seen.extend(texts)
        return score(texts, examples)

    monkeypatch.setattr(task, "score", recording)
    examples = [task.train[i] for i in range(cfg.trainer.rollout_batch_size)]
    rollout = collect_rollout(model, tokenizer, task, examples, cfg,
                              torch.Generator().manual_seed(0))  # fmt: skip
    gen = rollout.gen
    want = [tokenizer.decode(ids[mask].tolist(), skip_special_tokens=skip)
            for ids, mask in zip(gen.completion_ids, gen.completion_mask, strict=True)]  # fmt: skip
    assert seen == want
    ended = [text.endswith(tokenizer.eos_token) for text in seen]
    assert any(ended) != skip  # the tiny model ends some completions with EOS


def test_a_template_that_opens_with_plain_text_gets_no_bos_added():
    # Zephyr's (TinyLlama-Chat's) opens with `<|user|>`, no special token in its vocabulary.
    tokenizer = char_tokenizer(
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    example = build_task(dataset_cfg(), tokenizer).train[0]
    gen = generate(random_model(len(tokenizer)), tokenizer, [example["prompt"]], 1, temperature=0)
    messages = [{"role": "user", "content": example["question"]}]
    want = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert gen.prompt_ids[0][gen.prompt_mask[0]].tolist() == want["input_ids"]
    assert tokenizer.bos_token_id not in want["input_ids"]
