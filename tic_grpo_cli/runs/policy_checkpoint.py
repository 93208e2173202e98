"""A training checkpoint: the policy's weights, its optimizer state and the trainer's state.

`checkpoint.py` owns the layout (a `step_N` dir written whole or not at all); this module
knows what goes in it for each way the model is held: rank 0 exports the model with
`save_pretrained`; the optimizer state goes into trainer_state.pt, except under FSDP, where
every rank writes its shard into `optimizer/` (torch.distributed.checkpoint), readable
again on any number of ranks.
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
    path. The model is always a plain save_pretrained export.
    The optimizer state goes into trainer_state.pt, except under FSDP, where each rank
    writes its shard into `optimizer/` (readable again on any number of ranks)."""
    if dist.mode != "fsdp":
        path = None
        if dist.is_main:
            path = save_checkpoint_dir(
                run_dir, step, lambda d: export_model(model, tokenizer, d),
                {**state, "optimizer": optimizer.state_dict()}, keep_last, keep_every, files,
            )  # fmt: skip
        return Path(dist.broadcast_object(str(path)))
    full, staging = _write_sharded_optimizer(dist, run_dir, step, model, optimizer)

    def write(out: Path) -> None:
        model.save_pretrained(out, state_dict=full)
        tokenizer.save_pretrained(out)
        os.replace(staging, out / OPTIMIZER_DIR)

    path = None
    if dist.is_main:
        path = save_checkpoint_dir(run_dir, step, write, state, keep_last, keep_every, files)
    return Path(dist.broadcast_object(str(path)))


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
    """Restore the optimizer from a checkpoint written by any mode and world size."""
    if "optimizer" in saved and dist.mode != "fsdp":
        optimizer.load_state_dict(saved["optimizer"])
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


def _keyed_by_name(state: dict[str, Any], model) -> dict[str, Any]:
    """optimizer.state_dict() keys parameters by position in the optimizer's list (here the
    trainable parameters in model order); the distributed state-dict API keys them by name."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                         for g in state["param_groups"]],
    }  # fmt: skip
