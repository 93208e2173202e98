"""Prompts on a real model's terms: the ids a chat template gives, limits checked at load
(prompt length, the model's context, a template that refuses a prompt), and the special
tokens a reward may see. Expected values come from the tokenizer and the model config."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tic_grpo_cli.config.schema import DatasetConfig, ModelConfig
from tic_grpo_cli.data import build_task
from tic_grpo_cli.models import load_tokenizer
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
