"""`tic-grpo eval checkpoint=<run>` evaluates the run's own task by default.

A training run's composed config (`<run>/.hydra/config.yaml`) says which model config,
data set, prompt and reward it was trained on. Without this, eval would compose its own
defaults (the embedded arithmetic task at 8 tokens) and score a run trained on a JSONL of
one's own on the wrong task. As `resume=` does for training, the run's settings are the
defaults and the command line still wins:

- `dataset=<option>` / `model=<option>` on the command line: that config, as composed;
- `dataset.<key>=` / `model.<key>=`: that key, the run's value for every other one;
- `eval.max_new_tokens` follows the run's `trainer.max_completion_length`, the limit its
  own evaluations used, unless given.

The composed config is edited after Hydra built it, so `--cfg job` still shows eval's
own defaults; results.json's `config` holds what was evaluated.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, read_write

from tic_grpo_cli.config.resume_argv import override_key

log = logging.getLogger("tic_grpo")

GROUPS = ("model", "dataset")


def train_dir_of(path: str | Path | None) -> Path | None:
    """The training run holding `checkpoint.path` (the run dir itself, or a
    `<run>/checkpoints/step_N`) when it kept its composed config; else None."""
    if path is None:
        return None
    path = Path(path).expanduser()
    for candidate in (path, path.parent.parent):
        if (candidate / ".hydra" / "config.yaml").is_file():
            return candidate
    return None


def adopt_run_config(cfg: DictConfig, given: list[str]) -> list[str]:
    """Set `cfg`'s model, dataset and generation limit to those of the run `cfg.checkpoint`
    names, except where `given` (the command-line overrides) sets them. Edits `cfg` in
    place; returns the keys taken from the run (empty when there is no run config)."""
    train_dir = train_dir_of(cfg.checkpoint.path)
    if train_dir is None:
        return []
    saved = OmegaConf.load(train_dir / ".hydra" / "config.yaml")
    keys = {override_key(o) for o in given}
    taken: list[str] = []
    with read_write(cfg):
        for group in GROUPS:
            if group in keys or group not in saved:
                continue  # the user chose another model / data set config
            values = OmegaConf.to_container(saved[group], resolve=True)
            for key, value in _leaves(values, group):
                if key not in keys and _settable(cfg, key):
                    OmegaConf.update(cfg, key, value, merge=False)
                    taken.append(key)
        # eval.max_new_tokens follows dataset.max_completion_length (now the run's); a run
        # that set trainer.max_completion_length apart evaluated itself at that limit.
        limit = OmegaConf.select(saved, "trainer.max_completion_length")
        own = keys & {"eval.max_new_tokens", "dataset", "dataset.max_completion_length"}
        if not own and limit is not None and limit != saved.dataset.max_completion_length:
            cfg.eval.max_new_tokens = int(limit)
            taken.append("eval.max_new_tokens")
    if taken:
        log.info(
            "evaluating the run's own task (%s, from %s); dataset= / model= or their keys "
            "override it",
            ", ".join(f"{g} {_describe(cfg, g)}" for g in GROUPS if g not in keys),
            train_dir / ".hydra" / "config.yaml",
        )
    return taken


def _leaves(values: Any, prefix: str) -> list[tuple[str, Any]]:
    """(dotted key, value) for every leaf of a nested dict; lists are leaves."""
    if not isinstance(values, dict):
        return [(prefix, values)]
    return [pair for k, v in values.items() for pair in _leaves(v, f"{prefix}.{k}")]


def _settable(cfg: DictConfig, key: str) -> bool:
    """Whether this version's schema has `key`: a run written by an older version may hold
    keys that no longer exist, which are skipped rather than refused."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent)
    return isinstance(node, DictConfig) and leaf in node


def _describe(cfg: DictConfig, group: str) -> str:
    node = cfg[group]
    if group == "model":
        return str(node.name_or_path)
    return str(node.path) if node.kind == "hf" else str(node.kind)


def is_base_of_run(cfg: DictConfig, train_dir: Path | None) -> bool:
    """Whether `cfg.model` loads the model the run at `train_dir` started from: the same
    source (name, GGUF file) in its saved config. Then evaluating it is the run's step 0."""
    if train_dir is None or not (train_dir / ".hydra" / "config.yaml").is_file():
        return False
    saved = OmegaConf.load(train_dir / ".hydra" / "config.yaml").get("model") or {}
    keys = ("name_or_path", "gguf_file", "gguf_package", "revision")
    return all(saved.get(k) == cfg.model.get(k) for k in keys)
