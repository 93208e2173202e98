"""Resume: which checkpoint a run continues from, whether it may, and the state it restores.

A checkpoint (checkpoint.py) carries, besides the weights, `trainer_state.pt`: the counters
of `TrainState`, the prompt sampler's position, the scheduler, the RNG states and the config
the run was trained with. Restoring all of it makes a resumed run log what the uninterrupted
one would have (tests/test_train.py kills a run and compares).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from tic_grpo_cli import checkpoint as ckpt
from tic_grpo_cli.distributed import Dist
from tic_grpo_cli.errors import UserError

log = logging.getLogger("tic_grpo")


@dataclass
class TrainState:
    """The loop's counters; all but `nonfinite_streak` are saved in every checkpoint."""

    step: int = 0  # optimizer steps taken
    rollouts: int = 0
    nonfinite_total: int = 0
    best_eval: float = math.nan
    last_eval: float = math.nan
    wandb_id: str | None = None
    nonfinite_streak: int = 0  # non-finite updates in a row; a resumed run starts from 0

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> TrainState:
        """The counters of a loaded `trainer_state.pt` (older ones lack some: defaults)."""
        return cls(
            step=saved["step"],
            rollouts=saved["rollouts"],
            nonfinite_total=saved.get("nonfinite_total", 0),
            best_eval=saved.get("best_eval", math.nan),
            last_eval=saved.get("last_eval", math.nan),
            wandb_id=saved.get("wandb_id"),
        )

    def to_checkpoint(self) -> dict[str, Any]:
        saved = asdict(self)
        del saved["nonfinite_streak"]
        return saved


def rollout_seed(seed: int, rollout: int, rank: int) -> int:
    """The sampling seed of one rollout on one rank. A function of the position alone, so a
    resumed run samples what the uninterrupted one would have (on any number of ranks, with
    no per-rank generator state to save), and ranks draw independent noise."""
    digest = hashlib.sha256(f"{seed}:{rollout}:{rank}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Python, numpy, torch and sampler RNG states as plain data (`weights_only` loadable)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "sampler": generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of `rng_state`."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy[0], np.array(numpy[1], dtype=np.uint32), *numpy[2:]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])


def find_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint `resume` names: null -> None; auto -> this run dir's newest (None if it
    has none); a path -> that checkpoint, or that run dir's newest. Raises UserError for a
    path that holds no checkpoint."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        found = ckpt.list_checkpoints(run_dir)
        return ckpt.resolve_checkpoint(run_dir) if found else None
    return ckpt.resolve_checkpoint(cfg.resume)


def check_compatible(saved: dict[str, Any], cfg: DictConfig, source: Path) -> None:
    """Refuse to resume a checkpoint of another model or algorithm (UserError naming the key)."""
    saved_cfg = saved.get("config", {})
    for key in ("model.name_or_path", "algorithm.name"):
        group, field = key.split(".")
        before = saved_cfg.get(group, {}).get(field)
        now = cfg[group][field]
        if before is not None and before != now:
            raise UserError(
                f"{key}={now!r} does not match the checkpoint {source} ({before!r}); "
                f"resume with {key}={before}"
            )


def load(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from and its trainer state, checked against `cfg`; (None,
    None) for a fresh run."""
    source = find_checkpoint(cfg, run_dir)
    if source is None:
        return None, None
    saved = ckpt.load_trainer_state(source)
    check_compatible(saved, cfg, source)
    return source, saved


def restore(
    saved: dict[str, Any], source: Path, policy, generator: torch.Generator, dist: Dist
) -> TrainState:
    """Put the optimizer, scheduler and RNG states of a loaded checkpoint back in place;
    return its counters. (`policy`, a train.Policy, was loaded from `source`; the prompt
    sampler takes `saved["sampler"]`.)"""
    dist.load_optimizer(policy.model, policy.optimizer, saved, source)
    policy.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"], generator)
    return TrainState.from_checkpoint(saved)
