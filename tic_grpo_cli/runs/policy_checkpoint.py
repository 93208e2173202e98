"""A training checkpoint: the policy's weights, its optimizer state and the trainer's state.

`checkpoint.py` owns the layout (a `step_N` dir written whole or not at all); this module
knows what goes in it for each way the model is held: rank 0 exports the model with
`save_pretrained` (a LoRA model: its adapter, plus the merged model at the end of the run or
with `model.lora.save_merged`; lora.py); the optimizer state goes into trainer_state.pt,
keyed by parameter name, except under FSDP, where every rank writes its shard into
`optimizer/` (torch.distributed.checkpoint), readable again on any number of ranks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tic_grpo_cli.errors import UserError
from tic_grpo_cli.models import export_model
from tic_grpo_cli.runs.checkpoint import save_checkpoint as save_checkpoint_dir
from tic_grpo_cli.runtime.distributed import Dist

# Under FSDP, a checkpoint's optimizer state is saved sharded (torch.distributed.checkpoint).
OPTIMIZER_DIR = "optimizer"


def save_checkpoint(
    dist: Dist, run_dir: Path, step: int, model, tokenizer, optimizer, state: dict[str, Any],
    keep_last: int, keep_every: int = 0, files: dict[str, str] | None = None,
) -> Path:  # fmt: skip
    """Rank 0 writes `checkpoints/step_<step>` (checkpoint.save_checkpoint: atomic, with
    `files` beside the model; pruned by keep_last/keep_every) and every rank returns its
    path. The model is a plain save_pretrained export; a LoRA model's is its adapter, and
    the merged model too at `trainer.max_steps` or with `model.lora.save_merged`, read from
    `state["config"]` (the run's resolved config), whose `model` node names the base.
    The optimizer state goes into trainer_state.pt keyed by parameter name, except under
    FSDP, where each rank writes its shard into `optimizer/` (readable on any number of ranks)."""
    base, merged = _lora_plan(state, step)
    if dist.mode != "fsdp":
        path = None
        if dist.is_main:
            path = save_checkpoint_dir(
                run_dir, step, lambda d: export_model(model, tokenizer, d, base, merged),
                {**state, "optimizer": _keyed_by_name(optimizer.state_dict(), model)},
                keep_last, keep_every, files,
            )  # fmt: skip
        return Path(dist.broadcast_object(str(path)))
    full, staging = _write_sharded_optimizer(dist, run_dir, step, model, optimizer)

    def write(out: Path) -> None:
        export_model(model, tokenizer, out, base, merged, state_dict=full)
        os.replace(staging, out / OPTIMIZER_DIR)

    path = None
    if dist.is_main:
        path = save_checkpoint_dir(run_dir, step, write, state, keep_last, keep_every, files)
    return Path(dist.broadcast_object(str(path)))


def _lora_plan(state: dict[str, Any], step: int) -> tuple[dict[str, Any] | None, bool]:
    """The base model config a LoRA checkpoint names (the run's `model` node: resuming
    never changes it) and whether the checkpoint also holds the merged model: at the end of
    the run, so `tic-grpo eval` and any HF tool read the final model as is, or every time
    with `model.lora.save_merged`."""
    config = state.get("config") or {}
    model = config.get("model")
    if not model:
        return None, True
    max_steps = config.get("trainer", {}).get("max_steps")
    final = max_steps is not None and step >= max_steps
    return model, final or bool(model.get("lora", {}).get("save_merged"))


def _write_sharded_optimizer(dist: Dist, run_dir: Path, step: int, model, optimizer):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    # Collective: every rank hands in its shards; rank 0 receives the whole model on CPU.
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    staging = Path(run_dir) / "checkpoints" / f".step_{step}.{OPTIMIZER_DIR}"
    if dist.is_main:
        shutil.rmtree(staging, ignore_errors=True)  # left by a save that failed
    dist.barrier()
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=staging)
    dist.barrier()
    return full, staging


def load_optimizer(dist: Dist, model, optimizer, saved: dict[str, Any], source: Path) -> None:
    """Restore the optimizer from a checkpoint written by any mode and world size, keyed by
    parameter name (older checkpoints: by position in the optimizer's list). Raises
    UserError when the saved names are not the model's trainable parameters."""
    if "optimizer" in saved and dist.mode != "fsdp":
        optimizer.load_state_dict(_keyed_by_position(saved["optimizer"], model, source))
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    if "optimizer" in saved:  # a whole state from a DDP / single-process run, into shards
        state = _keyed_by_name(saved["optimizer"], model)
        options = StateDictOptions(full_state_dict=True)
    else:
        import torch.distributed.checkpoint as dcp

        sharded = Path(source) / OPTIMIZER_DIR
        if not sharded.is_dir():
            raise UserError(f"{source} has no optimizer state ({OPTIMIZER_DIR}/ is missing)")
        # The current layout is the template: DCP reshards the saved state into it.
        state = get_optimizer_state_dict(model, optimizer)
        box = {"optimizer": state}
        dcp.load(box, checkpoint_id=sharded, no_dist=not dist.active)
        state, options = box["optimizer"], None
    set_optimizer_state_dict(model, optimizer, state, options=options)


def _trainable_names(model) -> list[str]:
    # The optimizer's parameter list is the trainable parameters in model order (load_policy).
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _keyed_by_name(state: dict[str, Any], model) -> dict[str, Any]:
    """optimizer.state_dict() keys parameters by position in the optimizer's list; saved by
    name, a moment can only land on its own parameter (the distributed state-dict API keys
    them so too). A state keyed by name already is returned as is."""
    if all(isinstance(i, str) for g in state["param_groups"] for i in g["params"]):
        return state
    names = _trainable_names(model)
    return {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                         for g in state["param_groups"]],
    }  # fmt: skip


def _keyed_by_position(state: dict[str, Any], model, source: Path) -> dict[str, Any]:
    """The inverse of `_keyed_by_name`, for `optimizer.load_state_dict`; a state keyed by
    position (an older checkpoint) is returned as is."""
    saved = [i for g in state["param_groups"] for i in g["params"]]
    if not all(isinstance(i, str) for i in saved):
        return state
    index = {name: i for i, name in enumerate(_trainable_names(model))}
    unknown = [name for name in saved if name not in index]
    if unknown or len(saved) != len(index):
        example = unknown[0] if unknown else sorted(set(index) - set(saved))[0]
        raise UserError(
            f"{source}: its optimizer state does not match the model's trainable parameters "
            f"({len(saved)} saved, {len(index)} now; e.g. {example}); resume with the "
            "model and model.lora settings the run was trained with"
        )
    # load_state_dict pairs a group's listed ids with the optimizer's parameters by position,
    # so each group lists its indices in the optimizer's (model) order, whatever the file's.
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**g, "params": sorted(index[n] for n in g["params"])}
                         for g in state["param_groups"]],
    }  # fmt: skip
