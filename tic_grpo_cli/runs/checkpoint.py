"""Checkpoints: written whole or not at all, found again by step.

Layout: `run_dir/checkpoints/step_<N>/` holds the model and tokenizer (`save_pretrained`,
safetensors) and `trainer_state.pt` (optimizer, scheduler, RNG states, step, data position,
config). A checkpoint is written into a temporary sibling directory and renamed, and
`checkpoints/latest` (a one-line text file naming the newest complete checkpoint) is
replaced atomically after that, so a crash at any point leaves the previous one usable.
Readers trust what is in a `step_N` dir, not `latest`: only a dir with weights, config.json
and trainer_state.pt counts (`list_checkpoints`); a LoRA run's checkpoint counts with its
adapter/ and base_model.json instead of weights (lora.py).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from tic_grpo_cli import lora
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runs.files import atomic_write_text, umask

STATE_FILE = "trainer_state.pt"
LATEST = "latest"
# save_pretrained writes one of these (sharded: an index plus shards).
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
_STEP_DIR = re.compile(r"^step_(\d+)$")


def missing_parts(path: Path) -> list[str]:
    """What a checkpoint dir lacks to be loaded and resumed (empty: it is complete). A LoRA
    run's checkpoint needs its adapter, not a model: the base loads from its own source."""
    path = Path(path)
    missing = [] if (path / STATE_FILE).is_file() else [STATE_FILE]
    if lora.is_adapter_checkpoint(path):
        return missing + lora.missing_adapter(path)
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        missing.append("model weights")
    return missing


def is_checkpoint(path: Path) -> bool:
    return Path(path).is_dir() and not missing_parts(path)


def step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Every `checkpoints/step_<N>` dir of a run, complete or not, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), child) for child in root.iterdir()
             if (m := _STEP_DIR.match(child.name)) and child.is_dir()]  # fmt: skip
    return sorted(found)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (weights, config and trainer state), oldest first."""
    return [(step, path) for step, path in step_dirs(run_dir) if is_checkpoint(path)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir as given, or a run dir's newest complete checkpoint (whatever
    `latest` says: a crash or a copy can leave a newer `step_N` incomplete). Raises
    UserError naming what is missing."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(
            f"checkpoint path {path} does not exist; give a run dir or checkpoints/step_N"
        )
    if is_checkpoint(path):
        return path
    if _STEP_DIR.match(path.name) and path.parent.name == "checkpoints":
        raise UserError(
            f"checkpoint {path} is incomplete (missing {', '.join(missing_parts(path))}); "
            f"give the run dir {path.parent.parent} to use its newest complete checkpoint"
        )
    found = list_checkpoints(path)
    if found:
        return found[-1][1]
    contents = ", ".join(sorted(p.name for p in path.iterdir())[:8]) if path.is_dir() else "a file"
    incomplete = f" ({len(step_dirs(path))} incomplete step_N)" if step_dirs(path) else ""
    raise UserError(
        f"{path} is not a checkpoint (expected {STATE_FILE}, config.json and weights (or a LoRA "
        f"adapter/), or a run "
        f"dir with complete checkpoints/step_N{incomplete}); found: {contents or 'an empty directory'}"
    )


def save_checkpoint(
    run_dir: Path,
    step: int,
    write_model: Callable[[Path], None],
    trainer_state: dict[str, Any],
    keep_last: int = 2,
    keep_every: int = 0,
    files: dict[str, str] | None = None,
) -> Path:
    """Write `checkpoints/step_<step>` atomically, point `latest` at it, prune old ones.

    `write_model(dir)` saves the model and tokenizer into `dir`; `files` (name -> text) are
    written beside them. Everything goes into a temporary sibling directory renamed to
    `step_<step>` once whole, so on any failure (a full disk included) the partial directory
    is removed and the previous checkpoints, a `step_<step>` from an earlier attempt
    included, stay intact. Pruning: see `prune`.
    """
    import torch

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step_{step}."))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700; readable like any dir
        write_model(tmp)
        torch.save(plain(trainer_state), tmp / STATE_FILE)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        if final.exists():
            # Out of the way by a rename, deleted only once the new one is in place.
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".old.step_{step}."))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        atomic_write_text(root / LATEST, final.name + "\n")
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(run_dir)
        kept = f"; previous checkpoint intact: {previous[-1][1]}" if previous else ""
        raise UserError(f"could not save checkpoint {final}: {err}{kept}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(run_dir, keep_last, keep_every)
    return final


def plain(value: Any) -> Any:
    """`value` with every Enum (a config's choices, config/choices.py) replaced by its value,
    so the trainer state loads with `weights_only=True` and in any version of the code."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if type(value) in (list, tuple):  # not a namedtuple: its fields are positional
        return type(value)(plain(v) for v in value)
    return value


def kept_steps(steps: list[int], keep_last: int, keep_every: int) -> set[int]:
    """The checkpoint steps pruning keeps: the newest `keep_last` (all if 0) and, of the
    rest, the first one in each window of `keep_every` steps (none if 0), so a run keeps a
    curve's worth of checkpoints for `tic-grpo eval checkpoint.all=true`."""
    steps = sorted(steps)
    if keep_last <= 0:
        return set(steps)
    kept = set(steps[-keep_last:])
    if keep_every > 0:
        first_in_window: dict[int, int] = {}
        for step in steps:
            first_in_window.setdefault(step // keep_every, step)
        kept |= set(first_in_window.values())
    return kept


def prune(run_dir: Path, keep_last: int, keep_every: int = 0) -> None:
    """Delete the complete checkpoints `kept_steps` does not keep (never the newest)."""
    found = list_checkpoints(run_dir)
    kept = kept_steps([step for step, _ in found], keep_last, keep_every)
    for step, path in found:
        if step not in kept:
            shutil.rmtree(path, ignore_errors=True)


def load_trainer_state(checkpoint_dir: Path) -> dict[str, Any]:
    """Trainer state without unpickling code: `weights_only=True` allows tensors and plain data."""
    import torch

    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        raise UserError(f"{checkpoint_dir} has no {STATE_FILE}: not a complete checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"cannot read {path}: {err}; the file is damaged or not ours") from err
