"""Checkpoints: written whole or not at all, found again by step.

Layout: `run_dir/checkpoints/step_<N>/` holds the model and tokenizer (`save_pretrained`,
safetensors) and `trainer_state.pt` (optimizer, scheduler, RNG states, step, data position,
config). A checkpoint is written into a temporary sibling directory and renamed, and
`checkpoints/latest` (a one-line text file naming the newest complete checkpoint) is
replaced atomically after that, so a crash at any point leaves the previous one usable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tic_grpo_cli.errors import UserError

STATE_FILE = "trainer_state.pt"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def is_checkpoint(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and (path / "config.json").is_file()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir as given, or a run dir's latest complete checkpoint."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(
            f"checkpoint path {path} does not exist; give a run dir or checkpoints/step_N"
        )
    if is_checkpoint(path):
        return path
    latest_file = path / "checkpoints" / LATEST
    if latest_file.is_file():
        candidate = path / "checkpoints" / latest_file.read_text().strip()
        if is_checkpoint(candidate):
            return candidate
    found = list_checkpoints(path)
    if found:
        return found[-1][1]
    contents = ", ".join(sorted(p.name for p in path.iterdir())[:8]) if path.is_dir() else "a file"
    raise UserError(
        f"{path} is not a checkpoint (expected {STATE_FILE} and config.json, or a run dir with "
        f"checkpoints/step_N); found: {contents or 'an empty directory'}"
    )


def save_checkpoint(
    run_dir: Path,
    step: int,
    write_model: Callable[[Path], None],
    trainer_state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write `checkpoints/step_<step>` atomically, point `latest` at it, prune old ones.

    `write_model(dir)` saves the model and tokenizer into `dir`. On any failure (a full disk
    included) the partial directory is removed and the previous checkpoint stays intact.
    """
    import torch

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step_{step}."))
    try:
        write_model(tmp)
        torch.save(trainer_state, tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
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
    if keep_last > 0:
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


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
