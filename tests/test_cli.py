"""The console script: help, `--cfg job`, Hydra's idioms, and bad input in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.config.test_configs import EXPECTED

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
