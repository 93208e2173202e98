"""The policy the inner loop updates: the model, its AdamW optimizer and learning-rate
schedule, and the frozen models some algorithms read (`load_policy`)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, read_write

from tic_grpo_cli import lora
from tic_grpo_cli.models import load_model_and_tokenizer
from tic_grpo_cli.runtime.distributed import Dist


def lr_lambda(cfg: DictConfig):
    """Linear warm-up, then constant, cosine decay to zero at max_steps, or constant with a
    linear decay to zero over the last decay_fraction of the steps (wsd)."""
    warmup, total, schedule = cfg.warmup_steps, cfg.max_steps, cfg.lr_schedule
    decay = max(1, round(cfg.decay_fraction * total))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if schedule == "wsd":
            return min(1.0, max(0.0, (total - step) / decay))
        return 1.0

    return factor


@dataclass
class Policy:
    """What the inner loop updates: the policy, its optimizer and schedule, and the frozen
    models some algorithms read (grpo_no_is's pi_old copy, a KL term's reference)."""

    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    frozen: Any = None
    ref_model: Any = None


def policy_model_config(cfg: DictConfig, source: Path | None) -> DictConfig:
    """The model config to load: `cfg.model`, or the checkpoint `source` when resuming: a
    LoRA run's adapter on the original base (its adapter stays the whole training relative
    to that base), any other checkpoint's weights."""
    model_cfg = copy.deepcopy(cfg.model)
    if source:
        with read_write(model_cfg):
            if lora.is_adapter_checkpoint(source):
                model_cfg.lora.adapter = str(source / lora.ADAPTER_DIR)
            else:
                model_cfg.name_or_path = str(source)
                model_cfg.gguf_file = model_cfg.gguf_package = None
    return model_cfg


def load_policy(
    cfg: DictConfig,
    dist: Dist,
    device: torch.device,
    dtype: torch.dtype,
    source: Path | None,
    tokenizer: Any = None,
) -> Policy:
    """The model to train (the checkpoint `source` when resuming), wrapped for the ranks,
    with AdamW and the learning-rate schedule of `lr_lambda`. `tokenizer`: the one
    `load_tokenizer` already returned for this model, if any."""
    hw, tr = cfg.hardware, cfg.trainer
    model_cfg = policy_model_config(cfg, source)
    storage = dist.storage_dtype(dtype)
    model, tokenizer = load_model_and_tokenizer(
        model_cfg, device, storage, hw.mixed_precision, tokenizer
    )
    frozen = copy.deepcopy(model) if cfg.algorithm.name == "grpo_no_is" else None
    ref_model = None
    if cfg.algorithm.kl_coef > 0:
        ref_model, _ = load_model_and_tokenizer(cfg.model, device, storage, hw.mixed_precision)
        ref_model.eval().requires_grad_(False)
    model, frozen, ref_model = (dist.wrap(m, dtype) for m in (model, frozen, ref_model))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=tr.lr, weight_decay=tr.weight_decay, betas=(tr.adam_beta1, tr.adam_beta2)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tr))
    return Policy(model, tokenizer, optimizer, scheduler, frozen, ref_model)
