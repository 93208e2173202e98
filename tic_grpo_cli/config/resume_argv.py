"""`tic-grpo train resume=<run>` rewritten before Hydra composes anything: the run's saved
overrides, then the ones given now, then the run's own dir. What each checkpoint saves for
this (`overrides.yaml`) is written by `overrides_file`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from tic_grpo_cli.config.overrides import FLAGS_WITH_VALUE
from tic_grpo_cli.runs import checkpoint as ckpt

OVERRIDES_FILE = "overrides.yaml"


def overrides_file() -> dict[str, str]:
    """{"overrides.yaml": the command-line overrides that made this run's config}, for its
    checkpoints: `tic-grpo train resume=<run>` composes them again (cli.resume_argv). Empty
    outside a Hydra app (train() called from Python)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    task = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    return {OVERRIDES_FILE: OmegaConf.to_yaml(task)}


def resume_argv(args: list[str]) -> list[str]:
    """`tic-grpo train resume=<run or checkpoint dir> [overrides]` as Hydra should see it:
    the run's saved overrides first (its newest complete checkpoint's overrides.yaml, else
    its .hydra/overrides.yaml), then the ones given now (they win; train() refuses those
    that change what the run is), and, unless `hydra.run.dir` is given, the run's own dir,
    whose .hydra/ record Hydra leaves as it was. Other command lines are returned as given.
    """
    value = next((a.split("=", 1)[1] for a in reversed(args) if a.startswith("resume=")), None)
    if value in (None, "", "auto", "null"):
        return args
    path = Path(value).expanduser()
    run = path.parent.parent if path.parent.name == "checkpoints" else path
    found = ckpt.list_checkpoints(run)
    newest = path if ckpt.is_checkpoint(path) else (found[-1][1] if found else None)
    saved = _saved_overrides(newest, run)
    if saved is None:  # not a run of ours: train() says why
        return args
    flags, overrides = _split_flags(args)
    given = {override_key(a) for a in overrides}
    merged = [o for o in saved if override_key(o) not in given | {"resume"}] + overrides
    if not any(a.startswith("hydra.run.dir=") for a in args):
        merged += [f"hydra.run.dir={_quoted(run.absolute())}", "hydra.output_subdir=null"]
    # Hydra's flags first: argparse takes the overrides as one run of positionals.
    return flags + merged


def _split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags with their values, e.g. `--cfg job`; the key=value overrides)."""
    flags, overrides, takes_value = [], [], False
    for arg in args:
        if takes_value or arg.startswith("-"):
            flags.append(arg)
            takes_value = arg in FLAGS_WITH_VALUE
        else:
            overrides.append(arg)
    return flags, overrides


def _saved_overrides(checkpoint: Path | None, run: Path) -> list[str] | None:
    for candidate in (checkpoint and checkpoint / OVERRIDES_FILE, run / ".hydra" / OVERRIDES_FILE):
        if candidate and candidate.is_file():
            return [str(o) for o in OmegaConf.load(candidate)]
    return None


def override_key(override: str) -> str:
    """The key or config group an override sets (`+dataset.x=1` -> `dataset.x`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).key_or_group
    except Exception:  # Hydra reports a malformed override itself, with its own message
        return override.split("=", 1)[0].lstrip("+~")


def _quoted(path: Path) -> str:
    """A path as a Hydra override value: quoted if it holds characters Hydra would parse."""
    text = str(path)
    if all(c.isalnum() or c in "/._-:" for c in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
