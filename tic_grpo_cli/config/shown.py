"""What `--cfg job` prints: the composed job config without the dataset keys its kind
never reads (a JSONL data set's config does not list the arithmetic task's digits).

Hydra prints `--cfg` itself, from `Hydra.get_sanitized_cfg`; `install()` wraps that method
for the one process that prints, so the config shown is the one Hydra composed (every
override, preset and `resume=` applied), only shorter. The run itself still receives the
whole typed config: nothing here changes what a job sees.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, open_dict

from tic_grpo_cli.config.schema import DATASET_KIND_KEYS


def drop_unread_dataset_keys(cfg: DictConfig) -> DictConfig:
    """Remove, in place, the `dataset` keys that `dataset.kind` does not read
    (`DATASET_KIND_KEYS`); returns `cfg`. A config without a dataset node, or whose kind is
    unknown (validation reports that), is left whole."""
    dataset = cfg.get("dataset") if isinstance(cfg, DictConfig) else None
    kind = dataset.get("kind") if isinstance(dataset, DictConfig) else None
    if kind is None or not any(kind in kinds for kinds in DATASET_KIND_KEYS.values()):
        return cfg
    with open_dict(dataset):
        for key, kinds in DATASET_KIND_KEYS.items():
            if kind not in kinds and key in dataset:
                del dataset[key]
    return cfg


def install() -> None:
    """Make Hydra's `--cfg job` / `--cfg all` print `drop_unread_dataset_keys` of the job."""
    from hydra._internal.hydra import Hydra

    sanitized = Hydra.get_sanitized_cfg
    if getattr(sanitized, "_tic_grpo", False):
        return

    def shorter(self: Any, cfg: DictConfig, cfg_type: str) -> DictConfig:
        cfg = sanitized(self, cfg, cfg_type)
        return cfg if cfg_type == "hydra" else drop_unread_dataset_keys(cfg)

    shorter._tic_grpo = True  # type: ignore[attr-defined]
    Hydra.get_sanitized_cfg = shorter  # type: ignore[method-assign]
