"""LoRA adapters (peft): add one to a base model, restore a saved one, save it, merge it.

A LoRA run's checkpoint holds the adapter, not a model: `adapter/` (peft's
`adapter_config.json` + `adapter_model.safetensors`) and `base_model.json`, the model config
fields that load the base it applies to. Resume and eval load that base from its original
source (a hub name, a local directory, a GGUF file) and put the adapter on it, so an adapter
is always the whole training relative to the original base. The merged model (config.json +
weights) is added to the final checkpoint, or to every one with `model.lora.save_merged`.

Dropout is always 0 (`lora_dropout`): every log-prob pass must be deterministic, in train()
mode too (docs/models.md).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tic_grpo_cli.assets import EMBEDDED
from tic_grpo_cli.errors import UserError

if TYPE_CHECKING:  # torch and peft load only when a LoRA model does: checkpoint checks are light
    import torch

ADAPTER_DIR = "adapter"
BASE_FILE = "base_model.json"
# The model config fields that say where the base model comes from.
SOURCE_KEYS = ("name_or_path", "gguf_file", "gguf_package", "revision", "trust_remote_code")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def require_peft(key: str = "model.lora.enabled") -> None:
    """Raise UserError naming `key` (the setting that needs it) when peft is not installed."""
    if importlib.util.find_spec("peft") is None:
        raise UserError(f"{key} needs peft: pip install 'tic-grpo[lora]'")


def is_peft(model: Any) -> bool:
    """Whether `model` (unwrapped from DDP and torch.compile by the caller) is a peft model."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def is_adapter_checkpoint(path: Path) -> bool:
    """Whether a checkpoint is a LoRA run's (this version's): it names its base model in
    base_model.json, and its adapter/ is the model (complete or not: `missing_adapter`)."""
    return (Path(path) / BASE_FILE).is_file()


def missing_adapter(path: Path) -> list[str]:
    """The adapter files a LoRA checkpoint lacks (empty: its model is complete)."""
    return [
        f"{ADAPTER_DIR}/{name}"
        for name in ADAPTER_FILES
        if not (Path(path) / ADAPTER_DIR / name).is_file()
    ]


def add_adapter(model: Any, lora_cfg: Any, checkpointing: bool) -> Any:
    """`model` wrapped by peft with a LoRA adapter of `lora_cfg` (r, alpha, target_modules;
    dropout 0 whatever `lora_cfg.dropout` says). With `lora_cfg.adapter` (a saved adapter
    directory) its weights are loaded in place of the fresh ones. Raises UserError when peft
    is missing or the saved adapter does not fit."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=0.0,
        target_modules=list(lora_cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    # Checkpointed blocks need an input that requires grad when the embeddings are frozen.
    if checkpointing:
        model.enable_input_require_grads()
    model = get_peft_model(model, config)
    if lora_cfg.adapter:
        _load_weights(model, Path(lora_cfg.adapter))
    return model


def _load_weights(model: Any, adapter: Path) -> None:
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    _require_adapter_dir(adapter)
    saved = load_peft_weights(str(adapter), device="cpu")
    wanted = {n for n, p in model.named_parameters() if p.requires_grad}
    try:
        result = set_peft_model_state_dict(model, saved)
    except RuntimeError as err:  # a shape mismatch: another r or another base model
        first = str(err).strip().splitlines()[-1]
        raise UserError(
            f"model.lora.adapter: {adapter} does not fit this model and model.lora "
            f"settings ({first}); use the r, alpha and target_modules it was trained with"
        ) from None
    missing = wanted & set(result.missing_keys)
    if missing or result.unexpected_keys:
        raise UserError(
            f"model.lora.adapter: {adapter} does not fit this model's LoRA layers "
            f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected, e.g. "
            f"{sorted(missing or result.unexpected_keys)[0]}); check model.lora.target_modules"
        )


def _require_adapter_dir(adapter: Path) -> None:
    missing = [name for name in ADAPTER_FILES if not (adapter / name).is_file()]
    if missing:
        raise UserError(
            f"model.lora.adapter: {adapter} is not a saved adapter (missing "
            f"{', '.join(missing)}); give a LoRA checkpoint's adapter/ directory"
        )


def merge_saved_adapter(model: Any, adapter: Path) -> Any:
    """The plain model with the saved adapter at `adapter` merged into its weights (eval)."""
    require_peft("model.lora.adapter")
    from peft import PeftModel

    _require_adapter_dir(Path(adapter))
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def base_reference(model_cfg: dict[str, Any]) -> str:
    """What an adapter's `base_model_name_or_path` names: an embedded or local model's
    absolute directory, else the hub name (also a GGUF model's label)."""
    name = str(model_cfg["name_or_path"])
    return str(EMBEDDED[name]) if name in EMBEDDED else str(_absolute_if_local(name))


def save_adapter(
    model: Any, out_dir: Path, base: dict[str, Any], state_dict: dict | None = None
) -> None:
    """Write `out_dir/adapter/` (naming the original base) and `out_dir/base_model.json`
    (the `model` config fields of that base). `state_dict`: the model's whole state dict
    when the live parameters are sharded (FSDP)."""
    out_dir = Path(out_dir)
    config = next(iter(model.peft_config.values()))
    # peft would name the model's own source: a resume checkpoint, which pruning deletes.
    config.base_model_name_or_path = base_reference(base)
    extra = {} if state_dict is None else {"state_dict": state_dict}
    # The vocabulary is never resized here, so peft need not fetch the base's config to check.
    model.save_pretrained(out_dir / ADAPTER_DIR, save_embedding_layers=False, **extra)
    base_fields = {key: base.get(key) for key in SOURCE_KEYS}
    # A relative path would name another directory, or nothing, once eval or a resume runs
    # elsewhere; a GGUF file named inside its package stays a name.
    base_fields["name_or_path"] = _absolute_if_local(base_fields["name_or_path"])
    if not base_fields.get("gguf_package"):
        base_fields["gguf_file"] = _absolute_if_local(base_fields.get("gguf_file"))
    (out_dir / BASE_FILE).write_text(json.dumps(base_fields, indent=2) + "\n")


def _absolute_if_local(name: str | None) -> str | None:
    if name is None or str(name) in EMBEDDED:
        return name
    path = Path(str(name)).expanduser()
    return str(path.resolve()) if path.exists() else name


def read_base(checkpoint: Path) -> dict[str, Any]:
    """The base model fields an adapter checkpoint's base_model.json holds."""
    path = Path(checkpoint) / BASE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}; the checkpoint is damaged") from err


def merged_state_dict(model: Any, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's state dict with every LoRA delta `B @ A * scaling` added to its
    layer's weight, keys as the plain model names them. Works from a state dict (FSDP's
    full one on rank 0), so no second copy of the model is built to merge it."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    merged = {
        key.removeprefix(prefix).replace(".base_layer.", "."): value
        for key, value in state_dict.items()
        if ".lora_" not in key
    }
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter, scaling in module.scaling.items():
            a = state_dict[f"{name}.lora_A.{adapter}.weight"].float()
            b = state_dict[f"{name}.lora_B.{adapter}.weight"].float()
            delta = (b @ a) * scaling
            if getattr(module, "fan_in_fan_out", False):  # GPT-2's Conv1D stores W transposed
                delta = delta.T
            key = f"{name.removeprefix(prefix)}.weight"
            merged[key] = (merged[key].float() + delta).to(merged[key].dtype)
    return merged


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; sharded (FSDP) parameters count whole."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total
