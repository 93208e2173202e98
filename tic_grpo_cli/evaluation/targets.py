"""What `tic-grpo eval` evaluates: `checkpoint=` resolved to checkpoints (or the model config).

A checkpoint is just a model config whose `name_or_path` is the checkpoint dir, or for a LoRA
checkpoint holding only its adapter, the base model's config with `lora.adapter` set
(`checkpoint_model_config`); either loads through the usual `models.load_model_and_tokenizer`.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, read_write

from tic_grpo_cli import lora
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runs.checkpoint import is_checkpoint, list_checkpoints, resolve_checkpoint

# Any of these next to config.json means `save_pretrained` wrote a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_STEP = re.compile(r"^step_(\d+)$")
log = logging.getLogger("tic_grpo")


@dataclass
class Target:
    """One model to evaluate: a checkpoint (with its step and training run) or a model config."""

    label: str
    checkpoint: Path | None = None
    step: int | None = None
    train_dir: Path | None = None  # the training run dir holding the checkpoint, if any


def resolve_targets(selection: DictConfig, model_name: str) -> list[Target]:
    """The checkpoints (or the configured model) `checkpoint.path` / `checkpoint.all` name.

    Checks paths and tokenizer files before anything heavy is imported or loaded, so bad
    input fails in a second.
    """
    if selection.path is None:
        return [Target(label=model_name)]
    path = Path(selection.path).expanduser()
    if not path.exists():
        raise UserError(
            f"checkpoint={path}: no such file or directory; expected a checkpoint dir "
            "(<run>/checkpoints/step_N) or a training run dir"
        )
    if selection.all:
        found = [ckpt for _, ckpt in list_checkpoints(path)]
        if not found:
            hint = (
                f" (it is a single checkpoint: drop checkpoint.all or give {path.parent.parent})"
                if is_checkpoint(path)
                else ""
            )
            raise UserError(
                f"checkpoint.all=true expects a training run dir with checkpoints/step_N; "
                f"found none in {path}{hint}"
            )
        if len(found) == 1:
            # A run shorter than trainer.save_every keeps only its final checkpoint.
            log.warning(
                "checkpoint.all=true: %s holds one checkpoint (%s), so the curve has one "
                "point; train with a smaller trainer.save_every (and trainer.keep_every) "
                "to keep more",
                path,
                found[0].name,
            )
    else:
        found = [resolve_checkpoint(path)]
    targets = [_checkpoint_target(ckpt) for ckpt in found]
    for target in targets:
        _require_tokenizer(target.checkpoint)
    return targets


def _checkpoint_target(ckpt: Path) -> Target:
    match = _STEP.match(ckpt.name)
    train_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    return Target(
        label=ckpt.name if train_dir else str(ckpt),
        checkpoint=ckpt,
        step=int(match.group(1)) if match else None,
        train_dir=train_dir,
    )


def _require_tokenizer(ckpt: Path) -> None:
    if not any((ckpt / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"checkpoint {ckpt} has no tokenizer (expected {' or '.join(TOKENIZER_FILES[:2])} "
            "next to config.json); save it with tokenizer.save_pretrained"
        )


def checkpoint_model_config(model_cfg: DictConfig, checkpoint: Path | None) -> DictConfig:
    """A copy of the model config that loads `checkpoint` through the usual loader: its
    weights, or for a LoRA checkpoint without them, its base model (from base_model.json)
    with the adapter merged in."""
    cfg = copy.deepcopy(model_cfg)
    with read_write(cfg):
        if checkpoint is not None and _has_weights(checkpoint):
            cfg.name_or_path = str(checkpoint)
            # The checkpoint is a full HF directory: no GGUF, no hub revision.
            cfg.gguf_file = cfg.gguf_package = cfg.revision = None
            cfg.lora.adapter = None
        elif checkpoint is not None:
            for key, value in lora.read_base(checkpoint).items():
                cfg[key] = value if key != "trust_remote_code" else bool(value)
            cfg.lora.adapter = str(checkpoint / lora.ADAPTER_DIR)
        # Adapters are for training; fresh LoRA weights would change nothing but the speed.
        cfg.lora.enabled = False
    return cfg


def _has_weights(checkpoint: Path) -> bool:
    # A LoRA run's final checkpoint holds the merged model too: loading it needs no base.
    return (checkpoint / "config.json").is_file() or not lora.is_adapter_checkpoint(checkpoint)
