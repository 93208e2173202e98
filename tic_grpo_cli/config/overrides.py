"""Command-line overrides checked before Hydra runs anything: typos get a correction.

Hydra accepts `+trainer.max_step=5` (a new key nobody reads) and answers a misspelt
`trainer.max_step=5` with a hint to add the `+`, so following its advice starts the full
default run with the key ignored. Here every override is checked against the composed
config first: an unknown key (with or without `+`), an unknown group option or a bad value
stops with one line naming the closest valid spellings (difflib). Sweeps (`a=x,y`,
`range()`, `choice()`) are checked value by value, so `tic-grpo sweep algorithm=grpo,foo`
fails at once instead of after the first job. Runs before Hydra creates a run dir.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Iterator
from functools import partial

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from tic_grpo_cli.config.choices import Choice
from tic_grpo_cli.config.validation import not_one_of
from tic_grpo_cli.errors import UserError, did_you_mean, suggest

# Hydra's own flags: its messages (or its help) stand, nothing to compose.
NO_PRECHECK = {
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--version",
}
# Hydra flags followed by a value (`--cfg job`); `--info` takes one optionally.
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--info", "-i")
# The flags that print a config and run nothing.
SHOW_CONFIG = {"--cfg", "-c"}


# What a key is called in the trainers our users come from (TRL's GRPOConfig, verl's and
# OpenRLHF's configs), by its last part: no spelling is close, so difflib alone cannot help
# (`num_generations` would get `generation_batch_size`). Names whose meaning differs in unit
# (TRL's per-device batch sizes count completions per GPU) are left out rather than guessed.
SYNONYMS = {
    "learning_rate": "trainer.lr",
    "actor_lr": "trainer.lr",
    "num_generations": "trainer.group_size",
    "n_samples_per_prompt": "trainer.group_size",
    "n": "trainer.group_size",
    "num_iterations": "trainer.ppo_epochs",
    "train_batch_size": "trainer.rollout_batch_size",
    "rollout_batch_size": "trainer.rollout_batch_size",
    "ppo_mini_batch_size": "trainer.minibatch_size",
    "mini_batch_size": "trainer.minibatch_size",
    "ppo_micro_batch_size_per_gpu": "trainer.micro_batch_size",
    "micro_train_batch_size": "trainer.micro_batch_size",
    "total_training_steps": "trainer.max_steps",
    "max_response_length": "dataset.max_completion_length",
    "generate_max_len": "dataset.max_completion_length",
    "grad_clip": "trainer.max_grad_norm",
    "lr_warmup_steps": "trainer.warmup_steps",
    "lr_scheduler_type": "trainer.lr_schedule",
    "save_steps": "trainer.save_every",
    "save_freq": "trainer.save_every",
    "eval_steps": "trainer.eval_every",
    "test_freq": "trainer.eval_every",
    "logging_steps": "trainer.log_every",
    "save_total_limit": "trainer.keep_last",
    "beta": "algorithm.kl_coef",
    "init_kl_coef": "algorithm.kl_coef",
    "kl_loss_coef": "algorithm.kl_coef",
    "kl_loss_type": "algorithm.kl_estimator",
    "epsilon": "algorithm.epsilon_low algorithm.epsilon_high",  # one symmetric clip
    "clip_ratio": "algorithm.epsilon_low",
    "clip_ratio_low": "algorithm.epsilon_low",
    "eps_clip": "algorithm.epsilon_low",
    "clip_ratio_high": "algorithm.epsilon_high",
    "loss_agg_mode": "algorithm.aggregation",
    "scale_rewards": "algorithm.normalize_std",
    "reward_funcs": "dataset.reward.fns",
    "reward_weights": "dataset.reward.weights",
    "model_name_or_path": "model.name_or_path",
    "pretrain": "model.name_or_path",
    "dataset_name": "dataset.path",
    "project_name": "wandb.project",
    "experiment_name": "wandb.name",
    "run_name": "wandb.name",
    "bf16": "hardware.mixed_precision",
    "max_completion_length": "dataset.max_completion_length",  # trainer.'s follows it
    "max_prompt_length": "dataset.max_prompt_length",  # TRL's, verl's and ours before
}
# Names whose value picks one of our algorithms (TRL's loss_type=dr_grpo, verl's
# adv_estimator=grpo): the hint is the config group with that value.
GROUP_SYNONYMS = {
    "loss_type": "algorithm",
    "adv_estimator": "algorithm",
    "policy_loss": "algorithm",
}


def suggest_key(key: str, keys: list[str], n: int = 3) -> list[str]:
    """The closest dotted config keys to `key`: what another trainer's name for it means
    first (`trainer.num_generations` -> `trainer.group_size`, from SYNONYMS), then a sibling
    under the same parent (`trainer.max_step` -> `trainer.max_steps`), else any key with a
    close last part (`max_steps` -> `trainer.max_steps`, `algorithm.lr` -> `trainer.lr`)."""
    parent, _, leaf = key.rpartition(".")
    known = [k for k in SYNONYMS.get(leaf, "").split() if k in keys]
    if known:
        return known
    for pool in ([k for k in keys if k.rpartition(".")[0] == parent], keys):
        leaves = suggest(leaf, sorted({k.rpartition(".")[2] for k in pool}), n)
        found = [k for name in leaves for k in pool if k.rpartition(".")[2] == name]
        if found:
            return found[:n]
    return []


def check(
    config_name: str,
    args: list[str],
    validate: Callable[[DictConfig], None] | None = None,
) -> None:
    """Compose `config_name` with the overrides in `args` and raise UserError on the first
    unknown key, unknown group option, bad type or (for each value of a sweep) a value
    `validate` rejects. Hydra flags are skipped; HYDRA_FULL_ERROR=1 skips the check."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or NO_PRECHECK & set(args):
        return
    try:
        overrides = OverridesParser.create().parse_overrides(_override_args(args))
    except OverrideParseException as err:
        raise UserError(
            f"cannot parse the overrides: {str(err).splitlines()[0]}; quote a value with "
            "characters such as < > * ( ) [ ] { } , = : as key='\"value\"' (Hydra's "
            "override grammar)"
        ) from None
    multirun = bool({"-m", "--multirun"} & set(args))
    sweeps = [o for o in overrides if o.is_sweep_override()]
    shows_config = bool(SHOW_CONFIG & set(args))
    if sweeps and not multirun and shows_config:
        line, key = sweeps[0].input_line, sweeps[0].key_or_group
        raise UserError(f"{line}: --cfg shows one job's config; give {key} one value")
    if sweeps and not multirun:
        line = sweeps[0].input_line
        raise UserError(
            f"{line}: several values need a multirun: tic-grpo {config_name} -m ... (or "
            f"tic-grpo sweep ...); one list value is written {sweeps[0].key_or_group}=[...]"
        )
    # A config folder of the user's own (`hydra.searchpath=[file://...]`) adds group
    # options, e.g. `dataset=my_task`: every look-up below sees it too.
    search = [a for a in args if a.lstrip("+").startswith("hydra.searchpath=")]
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        options = partial(_group_options, config_name, search)
        groups = [o for o in overrides if options(o.key_or_group)]
        for override in groups:
            _check_group_values(override, options(override.key_or_group))
        compose_job = partial(_compose, config_name, search)
        base = compose_job(_first(groups))
        keys = _all_keys(base)
        for override in overrides:
            if override not in groups:
                _check_key(config_name, override, base, keys)
        per_override = [_values(o) for o in overrides]
        job = compose_job([values[0] for values in per_override if values])
        if validate is None:
            return
        if not multirun:
            # A run validates its config when it starts; `--cfg` prints it and runs nothing,
            # so a bad value would be shown without complaint.
            if shows_config:
                validate(job)
            return
        validate(job)
        # Each other value of each sweep once, every other override at its first value.
        for i, values in enumerate(per_override):
            for line in values[1:]:
                job_lines = [line if j == i else v[0] for j, v in enumerate(per_override) if v]
                validate(compose_job(job_lines))


def _override_args(args: list[str]) -> list[str]:
    """The `key=value` overrides of a command line, without Hydra's flags and hydra.* keys."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-") and not arg.lstrip("+~").startswith("hydra"):
            out.append(arg)
    return out


def _group_options(config_name: str, search: list[str], group: str) -> list[str]:
    """The options of config group `group` (none when `group` is no group), the user's
    search path included."""
    loader = GlobalHydra.instance().config_loader()
    return sorted(loader.get_group_options(group, config_name=config_name, overrides=search))


def _values(override: Override) -> list[str]:
    """The job-level overrides one override stands for: itself, or one per sweep value
    (none for a sweep that cannot be listed, such as Optuna's interval())."""
    if not override.is_sweep_override():
        return [override.input_line]
    if not override.is_discrete_sweep():
        return []
    # As Hydra's basic sweeper splits a sweep into its jobs' overrides.
    key = override.get_key_element()
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


def _first(overrides: list[Override]) -> list[str]:
    return [values[0] for values in map(_values, overrides) if values]


def _check_group_values(override: Override, options: list[str]) -> None:
    if override.type == OverrideType.DEL:
        return
    group = override.key_or_group
    for line in _values(override):
        value = line.split("=", 1)[1]
        if value not in options and value != "null":
            raise UserError(
                f"{group}={value}: no such option{did_you_mean(suggest(value, options))} "
                f"(allowed: {', '.join(options)})"
            )


def _check_key(command: str, override: Override, cfg: DictConfig, keys: list[str]) -> None:
    key = override.key_or_group
    if not _unknown(cfg, key):
        return
    group = GROUP_SYNONYMS.get(key.rpartition(".")[2])
    if group and override.value_type is not None and not override.is_sweep_override():
        hint = (
            f"; did you mean {group}={override.value()}? (`tic-grpo {command} --help` lists them)"
        )
    else:
        close = suggest_key(key, keys)
        hint = did_you_mean(close) or f"; `tic-grpo {command} --cfg job` lists them"
    raise UserError(f"{key}: no such config key{hint}")


def _unknown(cfg: DictConfig, key: str) -> bool:
    """True when `key` names nothing in `cfg` and no free-form node could hold it: under a
    typed (schema) node a new key is a typo that nothing would read."""
    node: object = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig):
            return False  # inside a value (a list, an Any field): composing judges it
        # keys(), not `in node`: `in` is False for a key whose value is ??? (missing).
        if part not in node.keys():  # noqa: SIM118
            return OmegaConf.get_type(node) is not dict
        node = node._get_node(part)
    return False


def _all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    return list(_walk(cfg, prefix))


def _walk(node: DictConfig, prefix: str) -> Iterator[str]:
    for name in node:
        key = f"{prefix}{name}"
        yield key
        child = node._get_node(name)
        if isinstance(child, DictConfig):
            yield from _walk(child, f"{key}.")


def _compose(config_name: str, search: list[str], overrides: list[str]) -> DictConfig:
    try:
        return compose(config_name, overrides=[*search, *overrides])
    except HydraException as err:
        raise composition_error(err, overrides) from None


def composition_error(err: HydraException, overrides: list[str]) -> UserError:
    """The one line a failed composition with `overrides` is reported as: the group option
    or key at fault and what is wrong; a value outside a field's choices gets a ConfigError
    with the closest allowed values."""
    if isinstance(err, MissingConfigException):
        group = str(err).split("Could not find '", 1)[-1].split("/", 1)[0]
        choice = next((o for o in overrides if o.lstrip("+").split("=")[0] == group), group)
        return UserError(f"{choice}: no such option; allowed: {', '.join(err.options or [])}")
    cause = err.__cause__
    choices = _choice_of(cause)
    if isinstance(cause, ValidationError) and choices is not None:
        # OmegaConf's "Invalid value 'tics', expected one of [...]", with our hint.
        return not_one_of(cause.full_key, cause.value, [member.value for member in choices])
    key = getattr(cause, "full_key", None)
    detail = getattr(cause, "msg", None) or str(err).splitlines()[0]
    return UserError(f"{key or 'override'}: {str(detail).splitlines()[0]}")


def _choice_of(err: BaseException | None) -> type[Choice] | None:
    """The choices of the schema field a composition error is about (field `err.key` of the
    dataclass `err.object_type`), or None when that field is no Enum."""
    owner, key = getattr(err, "object_type", None), getattr(err, "key", None)
    if not (isinstance(owner, type) and dataclasses.is_dataclass(owner)) or not isinstance(
        key, str
    ):
        return None
    hint = typing.get_type_hints(owner).get(key)
    for candidate in (hint, *typing.get_args(hint)):  # `Aggregation | None` holds Aggregation
        if isinstance(candidate, type) and issubclass(candidate, Choice):
            return candidate
    return None
