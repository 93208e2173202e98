"""LoRA runs: deterministic log-prob passes, adapter checkpoints, exact resume, eval, FSDP.

Expected values come from runs without the feature: an uninterrupted run for resume, a
plain model's logits for merged exports, a single process for FSDP.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tic_grpo_cli import lora
from tic_grpo_cli.config.schema import ConfigError, LoraConfig, ModelConfig, register_configs
from tic_grpo_cli.config.validation import validate_train
from tic_grpo_cli.models import TINY_DIR, load_model_and_tokenizer
from tic_grpo_cli.sampling import completion_logprobs

pytest.importorskip("peft")

CPU = torch.device("cpu")
SMALL = [
    "model.lora.enabled=true", "model.lora.r=4", "trainer.lr=1e-3",
    "trainer.rollout_batch_size=4", "trainer.group_size=4", "trainer.minibatch_size=2",
    "trainer.eval_every=4", "trainer.eval_limit=16", "trainer.save_every=4",
    "trainer.log_every=2", "trainer.log_samples_every=4", "wandb.mode=disabled",
    "hardware.num_threads=1",
]  # fmt: skip
TIMING = ("time/", "throughput/")


def make_cfg(*overrides: str):
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose("train", overrides=[*SMALL, *overrides])


def load(**overrides):
    cfg = OmegaConf.structured(ModelConfig(**overrides))
    return load_model_and_tokenizer(cfg, device=CPU, dtype=torch.float32)


def randomize_adapter(model, seed: int = 0) -> None:
    """lora_B starts at zero, which hides everything after lora_A (dropout included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def logprobs_twice(model, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Two training-mode passes over the same weights and tokens, as pi_old and the training
    forward are."""
    prompts = tokenizer(["12+34=", "7+8="], return_tensors="pt", padding=True)
    completion = tokenizer(["46", "15"], return_tensors="pt", add_special_tokens=False)
    args = (prompts["input_ids"], prompts["attention_mask"].bool(), completion["input_ids"],
            completion["attention_mask"].bool())  # fmt: skip
    model.train()
    with torch.no_grad():
        return completion_logprobs(model, *args), completion_logprobs(model, *args)


def adapter_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / lora.ADAPTER_DIR / "adapter_model.safetensors")


# ------------------------------------------------------------------ dropout


def test_lora_passes_in_train_mode_are_deterministic():
    # peft's default lora_dropout (0.05), asked for through the API: the loader sets it to 0.
    model, tokenizer = load(lora=LoraConfig(enabled=True, r=4, dropout=0.05))
    randomize_adapter(model)
    first, second = logprobs_twice(model, tokenizer)
    assert torch.equal(first, second)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_a_model_config_dropout_is_zero_at_load(tmp_path):
    shutil.copytree(TINY_DIR, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    model, tokenizer = load(name_or_path=str(tmp_path), attn_implementation="eager")
    assert model.config.attention_dropout == 0.0
    first, second = logprobs_twice(model, tokenizer)
    assert torch.equal(first, second)


def test_lora_dropout_override_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^model\.lora\.dropout: got 0\.05; dropout is off"):
        validate_train(make_cfg("model.lora.dropout=0.05"))
