"""Semantic checks on a composed config: what Hydra's typed schemas cannot say by themselves.

Ranges, divisibility, keys that only make sense together, and the few choices that are
plain strings. Each check raises `ConfigError` naming the key, the value and what is
allowed, before any model or data loads. The schemas are in `schema.py`, the choices in
`choices.py` (OmegaConf refuses a value outside an Enum's when the config is composed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from tic_grpo_cli.config.choices import (
    ARITHMETIC_OPERATORS,
    CHAT_TEMPLATE_MODES,
    COUNTDOWN_OPERATORS,
)
from tic_grpo_cli.config.schema import DATASET_KIND_KEYS, ConfigError, DatasetConfig
from tic_grpo_cli.errors import did_you_mean, suggest


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def not_one_of(key: str, value: Any, allowed: Sequence[str]) -> ConfigError:
    """The error for `value` outside `allowed` at `key`: the closest allowed values, then all."""
    hint = did_you_mean(suggest(str(value), list(allowed)))
    return ConfigError(f"{key}: got {value!r}{hint} (allowed: {', '.join(allowed)})")


def _one_of(value: Any, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise not_one_of(key, value, allowed)


def _check_kind_keys(data: DictConfig) -> None:
    """Refuse a key this kind of data set never reads, set away from its default: without
    it, `dataset.path=my.jsonl` on the default arithmetic task would train on arithmetic."""
    defaults = vars(DatasetConfig())  # default_factory fields (operators) included
    for key, kinds in DATASET_KIND_KEYS.items():
        value = data.get(key)
        if data.kind in kinds or value == defaults.get(key):
            continue
        hint = "add dataset=jsonl (a local file) or dataset=hf" if "hf" in kinds else (
            f"pick a data set of kind {' or '.join(kinds)} (dataset=...)")  # fmt: skip
        raise ConfigError(
            f"dataset.{key}: read only by data sets of kind {', '.join(kinds)}, and this one "
            f"is {data.kind}; {hint}, or drop the key"
        )


def _validate_dataset(data: DictConfig) -> None:
    # YAML reads `true` as a bool, which the str field stores as "True".
    _one_of(str(data.use_chat_template).lower(), CHAT_TEMPLATE_MODES, "dataset.use_chat_template")
    _check(data.max_completion_length >= 1, "dataset.max_completion_length", "must be >= 1")
    _check(
        data.max_prompt_length is None or data.max_prompt_length >= 1,
        "dataset.max_prompt_length",
        "must be >= 1 or null (no limit)",
    )
    _check_kind_keys(data)
    if data.kind == "hf":
        _check(bool(data.path), "dataset.path", "required for kind=hf (a hub name or a file)")
        _check(
            data.train_split is not None or data.test_split is not None,
            "dataset.train_split",
            "train_split and test_split cannot both be null",
        )
        _check(
            data.train_split != data.test_split,
            "dataset.test_split",
            f"{data.test_split!r} is also the train split; set it to null to hold out "
            "dataset.test_size rows of the train split instead",
        )
    else:
        _check(data.train_size >= 1, "dataset.train_size", f"must be >= 1, got {data.train_size}")
        allowed = ARITHMETIC_OPERATORS if data.kind == "arithmetic" else COUNTDOWN_OPERATORS
        _check(len(data.operators) > 0, "dataset.operators", "must not be empty")
        for op in data.operators:
            _one_of(op, allowed, "dataset.operators")
    _check(data.test_size >= 1, "dataset.test_size", f"must be >= 1, got {data.test_size}")
    if data.kind != "hf":
        splits = ("test", "validation") if data.kind == "chain" else ("test",)
        _check(data.train_split == "train", "dataset.train_split", "must be train (embedded task)")
        _one_of(data.test_split, splits, "dataset.test_split")
    if data.kind == "chain":
        _check(data.chain_length >= 1, "dataset.chain_length", "must be >= 1")
    if data.kind == "arithmetic":
        _check(1 <= data.digits <= 9, "dataset.digits", f"must be in [1, 9], got {data.digits}")
    if data.kind == "countdown":
        _check(data.num_numbers >= 2, "dataset.num_numbers", "must be >= 2")
        _check(data.max_number >= 1, "dataset.max_number", "must be >= 1")
        _check(data.max_target >= 1, "dataset.max_target", "must be >= 1")
    validate_reward(data.reward)


def validate_reward(reward: DictConfig, prefix: str = "dataset.reward") -> None:
    """Check a reward node (`dataset.reward`, or `reward` of `tic-grpo score`); errors name
    `prefix`.key."""
    specs = [(f"{prefix}.fn", reward.fn)] if reward.fn is not None else []
    for key, spec in [*specs, *((f"{prefix}.fns", s) for s in reward.fns)]:
        module, _, name = str(spec).partition(":")
        _check(
            bool(module) and name.isidentifier(),
            key,
            f"got {spec!r}; expected package.module:function",
        )
    if reward.weights is not None:
        _check(
            len(reward.weights) == len(reward.fns),
            f"{prefix}.weights",
            f"{len(reward.weights)} weights for {len(reward.fns)} functions in "
            f"{prefix}.fns; give one weight per function",
        )
    _check(
        reward.correct_threshold is None or reward.fn is not None,
        f"{prefix}.correct_threshold",
        f"applies to {prefix}.fn only; set fn, or drop the threshold",
    )
    _check(reward.verify_timeout > 0, f"{prefix}.verify_timeout", "must be > 0 seconds")
    if reward.format_pattern is not None:
        try:
            re.compile(reward.format_pattern)
        except re.error as err:
            raise ConfigError(f"{prefix}.format_pattern: not a regex ({err})") from None
    _check(reward.format_weight >= 0, f"{prefix}.format_weight", "must be >= 0")
    _check(
        reward.format_weight == 0 or reward.format_pattern is not None,
        f"{prefix}.format_weight",
        f"has no effect without {prefix}.format_pattern; set both",
    )


def validate_common(cfg: DictConfig) -> None:
    hw, model, data = cfg.hardware, cfg.model, cfg.dataset
    _check(hw.nproc_per_node >= 1, "hardware.nproc_per_node", "must be >= 1")
    _validate_dataset(data)
    _check(hw.num_threads is None or hw.num_threads >= 1, "hardware.num_threads", "must be >= 1")
    if model.lora.enabled:
        _check(model.lora.r >= 1, "model.lora.r", "must be >= 1")
    _check(
        model.lora.dropout == 0,
        "model.lora.dropout",
        f"got {model.lora.dropout}; dropout is off in every model (LoRA's included) so the "
        "log-prob passes agree (docs/models.md); drop the override",
    )


def validate_train(cfg: DictConfig) -> None:
    """Semantic checks on a composed train config; raises ConfigError naming the key."""
    validate_common(cfg)
    alg, tr = cfg.algorithm, cfg.trainer
    _check(alg.epsilon_high > 0, "algorithm.epsilon_high", f"must be > 0, got {alg.epsilon_high}")
    # 1 - eps_low is a ratio's lower bound: 1 leaves none (CISPO, traj_is without lower clip).
    # GMPO's epsilons are log-ratios, so any eps_low >= 0 is a bound there.
    _check(
        alg.epsilon_low >= 0 and (alg.epsilon_low <= 1 or alg.name == "gmpo"),
        "algorithm.epsilon_low",
        f"must be in [0, 1] (1: no lower clip), got {alg.epsilon_low}",
    )
    _check(alg.kl_coef >= 0, "algorithm.kl_coef", f"must be >= 0, got {alg.kl_coef}")
    _check(
        alg.rollout_correction_c > 1,
        "algorithm.rollout_correction_c",
        f"must be > 1, got {alg.rollout_correction_c}",
    )
    _check(
        alg.rollout_correction == "none" or tr.old_logprobs == "recompute",
        "algorithm.rollout_correction",
        f"{alg.rollout_correction} needs trainer.old_logprobs=recompute (with the sampler's "
        "log-probs as pi_old there is no mismatch to correct)",
    )
    _check(tr.group_size >= 2, "trainer.group_size", f"must be >= 2, got {tr.group_size}")
    _check(tr.rollout_batch_size >= 1, "trainer.rollout_batch_size", "must be >= 1")
    _check(
        tr.minibatch_size >= 1 and tr.rollout_batch_size % tr.minibatch_size == 0,
        "trainer.minibatch_size",
        f"{tr.minibatch_size} must divide trainer.rollout_batch_size={tr.rollout_batch_size} "
        "(both count prompts; K = rollout_batch_size / minibatch_size)",
    )
    for key in ("max_steps", "micro_batch_size", "ppo_epochs", "max_completion_length"):
        _check(tr[key] >= 1, f"trainer.{key}", f"must be >= 1, got {tr[key]}")
    for key in ("eval_every", "log_every", "log_samples_every", "save_every", "keep_last",
                "keep_every"):  # fmt: skip
        _check(tr[key] >= 0, f"trainer.{key}", f"must be >= 0, got {tr[key]}")
    _check(
        tr.generation_batch_size is None or tr.generation_batch_size >= 1,
        "trainer.generation_batch_size",
        "must be >= 1 or null (null: the whole rollout at once)",
    )
    _check(tr.lr > 0, "trainer.lr", f"must be > 0, got {tr.lr}")
    _check(tr.temperature > 0, "trainer.temperature", "must be > 0 for RL sampling")
    _check(0 < tr.top_p <= 1, "trainer.top_p", f"must be in (0, 1], got {tr.top_p}")
    _check(
        0 < tr.decay_fraction <= 1,
        "trainer.decay_fraction",
        f"must be in (0, 1], got {tr.decay_fraction}",
    )
    _check(
        tr.staleness >= 0,
        "trainer.staleness",
        f"must be >= 0 (rollouts between sampling and training), got {tr.staleness}",
    )


def validate_eval(cfg: DictConfig) -> None:
    validate_common(cfg)
    ev = cfg.eval
    _check(ev.num_samples >= 1, "eval.num_samples", f"must be >= 1, got {ev.num_samples}")
    _check(ev.temperature >= 0, "eval.temperature", "must be >= 0 (0 = greedy)")
    _check(
        ev.num_samples == 1 or ev.temperature > 0,
        "eval.temperature",
        f"must be > 0 when eval.num_samples={ev.num_samples} (greedy samples are all the same)",
    )
    _check(ev.limit is None or ev.limit >= 1, "eval.limit", "must be >= 1 or null")
    _check(0 < ev.top_p <= 1, "eval.top_p", f"must be in (0, 1], got {ev.top_p}")
    _check(ev.top_k >= 0, "eval.top_k", f"must be >= 0 (0 = off), got {ev.top_k}")
    _check(ev.max_new_tokens >= 1, "eval.max_new_tokens", f"must be >= 1, got {ev.max_new_tokens}")
    _check(ev.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {ev.batch_size}")
    sel = cfg.checkpoint
    _check(
        not sel.all or sel.path is not None,
        "checkpoint.all",
        "needs checkpoint=<training run dir> (all of its checkpoints are evaluated)",
    )
    _check(
        not ev.log_to_run or sel.path is not None,
        "eval.log_to_run",
        "needs checkpoint=<training run dir or one of its checkpoints>",
    )
