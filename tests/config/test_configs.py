"""Every option of every config group composes and validates; bad values name their key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from tests.conftest import compose_config
from tic_grpo_cli.config.schema import ConfigError
from tic_grpo_cli.config.validation import validate_eval, validate_train

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("algorithm", "model", "dataset", "hardware", "experiment")
EXPECTED = {
    "algorithm": {"grpo", "grpo_no_is", "tic", "ub_clip", "traj_is", "gspo", "dr_grpo", "dapo"},
    "model": {
        "tiny",
        "tiny_chain",
        "smollm2_135m",
        "qwen2_5_0_5b_instruct",
        "qwen3_1_7b",
        "qwen3_8b",
    },
    "dataset": {
        "arithmetic",
        "countdown",
        "chain",
        "chain_long",
        "gsm8k",
        "math500",
        "dapo_math",
        "jsonl",
    },
    "hardware": {"cpu", "gpu", "ddp", "fsdp", "slurm"},
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", list(EXPECTED))
def test_each_group_has_the_documented_options(group):
    assert EXPECTED[group] <= set(options(group))


def written_values(group: str, option: str) -> dict[str, object]:
    """Dotted key -> value for every value the option's own file sets, read with OmegaConf
    alone: `# @package _global_` files set keys from the root, the others inside their group.
    Interpolations are skipped (they resolve against other keys), and so is `defaults`."""
    path = CONF / group / f"{option}.yaml"
    prefix = "" if "@package _global_" in path.read_text() else f"{group}."
    written = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    values = {}

    def walk(node: dict, dotted: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{dotted}{key}.")
            elif key != "defaults" and not (isinstance(value, str) and "${" in value):
                # A sweep axis is named by its dotted key (trainer.lr): quote it for select.
                values[f"{dotted}{key}" if "." not in key else f"{dotted[:-1]}[{key}]"] = value

    walk(written, prefix)
    return values


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    extra = ["dataset.path=/tmp/x.jsonl"] if (group, option) == ("dataset", "jsonl") else []
    expected = written_values(group, option)
    expected.update(item.split("=", 1) for item in extra)  # the test's own override wins
    assert expected, f"conf/{group}/{option}.yaml sets nothing"
    # Algorithms and experiments are training choices: `tic-grpo eval` has no such group.
    names = ("train",) if group in ("algorithm", "experiment") else ("train", "eval")
    for name in names:
        cfg = compose_config(f"{group}={option}", *extra, name=name, hydra=True)
        for key, value in expected.items():
            got = OmegaConf.select(cfg, key)
            if isinstance(got, (DictConfig, ListConfig)):
                got = OmegaConf.to_container(got)
            assert got == value, (
                f"{name} with {group}={option}: {key} is {got!r}, file says {value!r}"
            )
        OmegaConf.resolve(cfg)
        (validate_train if name == "train" else validate_eval)(cfg)


def test_defaults_are_the_embedded_ones():
    cfg = compose_config()
    assert cfg.algorithm.name == "tic"
    assert cfg.model.name_or_path == "tiny"
    assert cfg.dataset.kind == "arithmetic"
    assert cfg.hardware.device == "cpu"
    assert cfg.wandb.mode == "offline"


def test_algorithm_option_sets_its_name():
    for option in EXPECTED["algorithm"]:
        assert compose_config(f"algorithm={option}").algorithm.name == option


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["algorithm.epsilon_high=0"], "algorithm.epsilon_high"),
        (["algorithm.epsilon_high=-0.1"], "algorithm.epsilon_high"),
        (["trainer.minibatch_size=5"], "trainer.minibatch_size"),
        (["trainer.group_size=1"], "trainer.group_size"),
        (["algorithm.aggregation=sum"], "algorithm.aggregation"),
        (["trainer.old_logprobs=vllm"], "trainer.old_logprobs"),
        (["trainer.decay_fraction=0"], "trainer.decay_fraction"),
        (["trainer.decay_fraction=1.5"], "trainer.decay_fraction"),
        (["hardware.device=tpu"], "hardware.device"),
        (["wandb.mode=cloud"], "wandb.mode"),
    ],
)
def test_semantic_errors_name_the_key(overrides, key):
    # A value outside a field's choices is refused as the config is composed, the others
    # when it is validated.
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_train(compose_config(*overrides))


def test_sweep_config_composes_with_its_default_grid():
    cfg = compose_config(name="sweep", hydra=True)
    params = cfg.hydra.sweeper.params
    assert set(params["algorithm"].split(",")) == {"grpo", "grpo_no_is", "tic"}
    validate_train(cfg)


def test_config_names_match_the_algorithm_library():
    # config/choices.py keeps its own copies so that `--help` need not import torch.
    from tic_grpo_cli import algorithms
    from tic_grpo_cli.algorithms import core, correction
    from tic_grpo_cli.config import choices

    assert {c.value for c in choices.AlgorithmName} == set(algorithms.ALGORITHMS)
    assert {c.value for c in choices.Aggregation} == set(core.AGGREGATIONS)
    assert {c.value for c in choices.KlEstimator} == set(core.KL_ESTIMATORS)
    assert {c.value for c in choices.RolloutCorrection} == set(correction.CORRECTIONS)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["dataset.path=my.jsonl"], "dataset.path"),  # the default arithmetic task
        (["dataset.prompt_field=q"], "dataset.prompt_field"),
        (["dataset=chain", "dataset.digits=3"], "dataset.digits"),
        (
            ["dataset=jsonl", "dataset.path=x.jsonl", "dataset.chain_length=8"],
            "dataset.chain_length",
        ),
    ],
)
def test_a_dataset_key_its_kind_never_reads_is_refused(overrides, key):
    """Set on a data set that does not read it, a key would be dropped in silence: the run
    would train on another task than the user named."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: read only by"):
        validate_train(compose_config(*overrides))


@pytest.mark.parametrize("preset", ["chain_lr_grid", "staleness_lr_grid", "chain", "paper_table2"])
def test_presets_set_only_keys_their_data_set_reads(preset):
    validate_train(compose_config(f"experiment={preset}"))
