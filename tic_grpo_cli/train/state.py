"""Resume: which checkpoint a run continues from, whether it may, and the state it restores.

A checkpoint (checkpoint.py) carries, besides the weights, `trainer_state.pt`: the counters
of `TrainState`, the prompt sampler's position, the scheduler, the RNG states and the config
the run was trained with. Restoring all of it makes a resumed run log what the uninterrupted
one would have (tests/train/test_state.py kills a run and compares).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tic_grpo_cli.errors import UserError, program
from tic_grpo_cli.runs import checkpoint as ckpt
from tic_grpo_cli.runs.policy_checkpoint import load_optimizer
from tic_grpo_cli.runtime.distributed import Dist

log = logging.getLogger("tic_grpo")


@dataclass
class TrainState:
    """The loop's counters; all but `nonfinite_streak` are saved in every checkpoint."""

    step: int = 0  # optimizer steps taken
    rollouts: int = 0  # rollouts generated
    updates: int = 0  # rollouts trained (fewer while trainer.staleness rollouts are queued)
    nonfinite_total: int = 0
    best_eval: float = math.nan
    last_eval: float = math.nan
    wandb_id: str | None = None
    wall_time_s: float = 0.0  # training time of the run, every session of it (tick())
    tokens: int = 0  # completion tokens sampled
    nonfinite_streak: int = 0  # non-finite updates in a row; a resumed run starts from 0
    _since: float = field(default_factory=time.perf_counter, repr=False)

    def tick(self, restart: bool = False) -> None:
        """Add the time since the last tick to `wall_time_s` (`restart`: start counting
        now, e.g. once a resumed run has loaded, without adding the loading time)."""
        now = time.perf_counter()
        if not restart:
            self.wall_time_s += now - self._since
        self._since = now

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> TrainState:
        """The counters of a loaded `trainer_state.pt` (older ones lack some: defaults)."""
        return cls(
            step=saved["step"],
            rollouts=saved["rollouts"],
            updates=saved.get("updates", saved["rollouts"]),
            nonfinite_total=saved.get("nonfinite_total", 0),
            best_eval=saved.get("best_eval", math.nan),
            last_eval=saved.get("last_eval", math.nan),
            wandb_id=saved.get("wandb_id"),
            wall_time_s=saved.get("wall_time_s", 0.0),
            tokens=saved.get("tokens", 0),
        )

    def to_checkpoint(self) -> dict[str, Any]:
        saved = asdict(self)
        del saved["nonfinite_streak"], saved["_since"]
        return saved


def rollout_seed(seed: int, rollout: int, rank: int) -> int:
    """The sampling seed of one rollout on one rank. A function of the position alone, so a
    resumed run samples what the uninterrupted one would have (on any number of ranks, with
    no per-rank generator state to save), and ranks draw independent noise."""
    digest = hashlib.sha256(f"{seed}:{rollout}:{rank}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Python, numpy, torch (CPU, and every CUDA device's when CUDA is in use) and sampler
    RNG states as plain data (`weights_only` loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "sampler": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of `rng_state`."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy[0], np.array(numpy[1], dtype=np.uint32), *numpy[2:]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            log.warning("resume: the checkpoint saved %d CUDA RNG states, this machine has %d "
                        "devices; restoring the first ones", len(cuda), torch.cuda.device_count())  # fmt: skip
        for device, value in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(value, device)


def find_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint `resume` names: null -> None; auto -> this run dir's newest complete
    one (None if it has no checkpoint); a path -> that checkpoint, or that run dir's newest
    complete one. A newer incomplete `step_N` (no weights, config or trainer state) is
    skipped with a warning. Raises UserError for a path that holds no complete checkpoint."""
    if not cfg.resume:
        return None
    where = run_dir if cfg.resume == "auto" else Path(cfg.resume).expanduser()
    if cfg.resume == "auto" and not ckpt.step_dirs(run_dir):
        return None
    source = ckpt.resolve_checkpoint(where)
    for step, path in ckpt.step_dirs(where):
        if path.name != source.name and step > _step_of(source) and not ckpt.is_checkpoint(path):
            log.warning(
                "skipping %s: incomplete (missing %s); resuming from %s",
                path, ", ".join(ckpt.missing_parts(path)), source.name,
            )  # fmt: skip
    return source


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step_")) if checkpoint.name.startswith("step_") else -1


# Keys an override on resume may change: when and how the run is reported, run, stopped and
# checkpointed, not what it computes. Any other difference from the checkpoint's config is
# refused (the model, algorithm, data, reward, batch and group sizes, lengths, seed, lr...).
SAFE_ON_RESUME = (
    "resume", "trainer.max_steps", "trainer.max_time_minutes", "trainer.eval_every",
    "trainer.eval_limit", "trainer.eval_batch_size", "trainer.log_every",
    "trainer.log_samples_every", "trainer.save_every", "trainer.keep_last", "trainer.keep_every",
    "trainer.micro_batch_size", "trainer.max_nonfinite_steps", "wandb.", "hardware.", "sweep.",
)  # fmt: skip


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return {k.removesuffix("."): v for k, v in out.items()}


def check_compatible(saved: dict[str, Any], cfg: DictConfig, source: Path) -> dict[str, tuple]:
    """Compare the config to the checkpoint's: raise UserError naming the first key that
    would change what the run is (see SAFE_ON_RESUME); return the safe changes as
    {key: (before, now)}. Keys only one side has (another version's schema) are not compared.
    """
    before = _flat(saved.get("config", {}))
    now = _flat(OmegaConf.to_container(cfg, resolve=True))
    changed = {k: (before[k], now[k]) for k in now if k in before and before[k] != now[k]}
    for key, (old, new) in changed.items():
        if not any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_ON_RESUME):
            raise UserError(
                f"{key}={new!r} differs from the checkpoint {source} ({old!r}) and changes what "
                f"the run is; drop the override to resume (or start a new run from its weights "
                f"with model.name_or_path={source})"
            )
    if cfg.trainer.max_steps < saved["step"]:
        raise UserError(
            f"trainer.max_steps={cfg.trainer.max_steps} is below the checkpoint's step "
            f"{saved['step']} ({source}); give a larger value or drop the override"
        )
    return {k: v for k, v in changed.items() if k != "resume"}


def load(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from and its trainer state, checked against `cfg` (the safe
    changes are logged); (None, None) for a fresh run."""
    source = find_checkpoint(cfg, run_dir)
    if source is None:
        return None, None
    saved = ckpt.load_trainer_state(source)
    for key, (old, new) in check_compatible(saved, cfg, source).items():
        log.info("resume: %s changed from %r to %r", key, old, new)
    return source, saved


def finished_summary(
    saved: dict[str, Any] | None, source: Path | None, max_steps: int
) -> dict[str, Any] | None:
    """The summary.json of the run `source` is a checkpoint of, when that run already
    finished at the checkpoint's step and `max_steps` asks for no more; logs one line saying
    so. None otherwise (a fresh run, more steps to take, or a run stopped at its last step
    before its final evaluation: resuming completes those)."""
    if saved is None or source is None or saved["step"] < max_steps:
        return None
    run = source.parent.parent
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    if summary.get("steps") != saved["step"]:
        return None
    log.info(
        "run already finished at step %d (summary.json written); nothing to do. To continue "
        "it, raise trainer.max_steps: %s train resume=%s trainer.max_steps=%d",
        saved["step"], program(), shlex.quote(str(run.absolute())), 2 * saved["step"],
    )  # fmt: skip
    return summary


def restore(
    saved: dict[str, Any], source: Path, policy, generator: torch.Generator, dist: Dist
) -> TrainState:
    """Put the optimizer, scheduler and RNG states of a loaded checkpoint back in place;
    return its counters. (`policy`, a train.Policy, was loaded from `source`; the prompt
    sampler takes `saved["sampler"]`.)"""
    load_optimizer(dist, policy.model, policy.optimizer, saved, source)
    policy.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"], generator)
    return TrainState.from_checkpoint(saved)
