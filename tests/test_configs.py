"""Every option of every config group composes and validates; bad input fails in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, ListConfig, OmegaConf

from tic_grpo_cli.config.schema import ConfigError, register_configs
from tic_grpo_cli.config.validation import validate_eval, validate_train
from tic_grpo_cli.runs.run_dir import register_resolvers

CONF = Path(__file__).resolve().parents[1] / "conf"
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


def compose_train(*overrides: str, name: str = "train"):
    register_configs()
    register_resolvers()  # ${tic_grpo.pid} in the run dir: the CLI registers it on import
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=True)


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
        cfg = compose_train(f"{group}={option}", *extra, name=name)
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
    cfg = compose_train()
    assert cfg.algorithm.name == "tic"
    assert cfg.model.name_or_path == "tiny"
    assert cfg.dataset.kind == "arithmetic"
    assert cfg.hardware.device == "cpu"
    assert cfg.wandb.mode == "offline"


def test_algorithm_option_sets_its_name():
    for option in EXPECTED["algorithm"]:
        assert compose_train(f"algorithm={option}").algorithm.name == option


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
    cfg = compose_train(*overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_train(cfg)


def test_sweep_config_composes_with_its_default_grid():
    cfg = compose_train(name="sweep")
    params = cfg.hydra.sweeper.params
    assert set(params["algorithm"].split(",")) == {"grpo", "grpo_no_is", "tic"}
    validate_train(cfg)


# ---- through the real console script ---------------------------------------------------


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "tic_grpo_cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=120,
    )


def test_top_level_help_lists_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0
    for sub in ("train", "eval", "sweep", "analyze"):
        assert f"\n  {sub}" in out.stdout


def test_train_help_lists_groups_and_options():
    out = run_cli("train", "--help")
    assert out.returncode == 0, out.stderr
    for group, names in EXPECTED.items():
        assert f"{group}:" in out.stdout
        for name in names:
            assert name in out.stdout


def test_cfg_job_prints_the_composed_config(tmp_path):
    out = run_cli("train", "--cfg", "job", "algorithm=grpo", "model=tiny", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.algorithm.name == "grpo" and cfg.model.name_or_path == "tiny"


@pytest.mark.parametrize(
    "command,dataset,shown,hidden",
    [
        ("train", ["dataset=jsonl", "dataset.path=data.jsonl"], ["path", "prompt_field"],
         ["digits", "operators", "train_size", "chain_length", "max_number"]),
        ("eval", ["dataset=jsonl", "dataset.path=data.jsonl"], ["path", "test_size"],
         ["digits", "num_numbers"]),
        ("train", [], ["digits", "operators", "train_size"],
         ["path", "prompt_field", "chain_length", "max_target"]),
        ("train", ["dataset=countdown"], ["operators", "max_target"], ["digits", "path"]),
    ],
)  # fmt: skip
def test_cfg_job_shows_the_dataset_keys_of_its_kind_only(tmp_path, command, dataset, shown,
                                                         hidden):  # fmt: skip
    """A JSONL data set's `--cfg job` listed the arithmetic task's digits and operators."""
    out = run_cli(command, "--cfg", "job", *dataset, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    keys = set(OmegaConf.create(out.stdout).dataset)
    assert set(shown) <= keys and not set(hidden) & keys, sorted(keys)
    assert {"seed", "max_completion_length", "reward", "prompt_template"} <= keys


def test_cfg_job_checks_values_and_works_for_sweeps(tmp_path):
    """`--cfg job` printed a config with a bad value without complaint, and `sweep --cfg job`
    ended in a traceback (Hydra refuses --cfg with --multirun)."""
    out = run_cli("train", "--cfg", "job", "algorithm.aggregation=dr_grpo", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().startswith("error: algorithm.aggregation: got 'dr_grpo' (allowed:")
    out = run_cli("sweep", "--cfg", "job", "experiment=chain_study", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert OmegaConf.create(out.stdout).trainer.max_steps == 64 and "Traceback" not in out.stderr
    out = run_cli("sweep", "--cfg", "job", "algorithm=grpo,tic", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--cfg shows one job's config; give algorithm one value" in out.stderr


def test_hydra_idioms_add_and_remove_keys(tmp_path):
    out = run_cli("train", "--cfg", "job", "experiment=paper_fig1", "~experiment", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert OmegaConf.create(out.stdout).trainer.max_steps == 2800
    # A key nothing reads is a typo, not an addition: `+` does not let it through.
    out = run_cli("train", "--cfg", "job", "+extra.note=hello", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: extra.note: no such config key")
    # `~group` removes a defaults-list entry; the typed schema keeps its keys fixed.
    out = run_cli("train", "--info", "defaults", "~experiment", cwd=tmp_path)
    assert out.returncode == 0 and "experiment/" not in out.stdout


def test_info_works(tmp_path):
    out = run_cli("train", "--info", "defaults", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "algorithm/tic" in out.stdout


@pytest.mark.parametrize(
    "override,needle",
    [
        ("algorithm.epsilon_high=abc", "epsilon_high"),
        ("algorithm.epsilonn=0.2", "epsilonn"),
        ("algorithm=foo", "algorithm"),
        ("algorithm.epsilon_high=0", "algorithm.epsilon_high"),
        ("trainer.minibatch_size=3", "trainer.minibatch_size"),
        ("trainer.group_size=1", "trainer.group_size"),
    ],
)
def test_bad_input_exits_nonzero_without_traceback(tmp_path, override, needle):
    out = run_cli("train", override, cwd=tmp_path)
    assert out.returncode != 0
    assert needle in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    # Nothing but the error (and Hydra's hint about HYDRA_FULL_ERROR) is printed.
    assert len([line for line in out.stderr.splitlines() if line.strip()]) <= 12


def test_semantic_error_is_one_line(tmp_path):
    out = run_cli("train", "trainer.minibatch_size=3", cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2
    assert lines == [lines[0]] and lines[0].startswith("error: trainer.minibatch_size")


def test_unknown_subcommand(tmp_path):
    out = run_cli("fly", cwd=tmp_path)
    assert out.returncode == 2 and "unknown subcommand" in out.stderr


def test_wheel_installs_and_runs_from_another_directory(tmp_path):
    """A non-editable install finds its configs (conf/ ships as tic_grpo_cli.conf)."""
    root = Path(__file__).resolve().parents[1]
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(root),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(dist.glob("tic_grpo-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    # The fresh venv gets our dependencies from the current environment (no network), but not
    # the editable install: a plain path line in a .pth does not run that path's .pth hooks.
    deps = next(
        p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "hydra").is_dir()
    )
    (site / "deps.pth").write_text(str(deps) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sys, tic_grpo_cli; from tic_grpo_cli.cli import main; print(tic_grpo_cli.__file__);"
            "sys.exit(main(['train', '--cfg', 'job', 'algorithm=grpo']))",
        ],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert str(site) in out.stdout.splitlines()[0]
    assert "name: grpo" in out.stdout


def test_config_names_match_the_algorithm_library():
    # config.py keeps its own copies so that `--help` need not import torch.
    from tic_grpo_cli import algorithms
    from tic_grpo_cli.config import schema as config

    assert set(config.ALGORITHMS) == set(algorithms.ALGORITHMS)
    assert set(config.AGGREGATIONS) == set(algorithms.AGGREGATIONS)
    assert set(config.KL_ESTIMATORS) == set(algorithms.KL_ESTIMATORS)


def test_off_a_terminal_tqdm_bars_are_off(tmp_path):
    # transformers de-quantises a GGUF file under a plain tqdm bar; in a log file its \r
    # redraws made one line of thousands of characters (SmolLM2 off a terminal).
    code = (
        "from tic_grpo_cli.cli import main; main(['--help']); "
        "from tqdm.auto import tqdm; [0 for _ in tqdm(range(3), desc='converting')]"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "converting" not in out.stderr
