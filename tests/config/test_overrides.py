"""Typos on the command line get a correction, not a trap (issue 19).

Before: `trainer.max_step=5` was answered with a hint to write `+trainer.max_step=5`, and that
started the full default run with the key ignored; `tic-grpo sweep algorithm=grpo,foo` printed
Hydra's 15-line error. Each case here failed on that code.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import compose_config
from tic_grpo_cli.config import overrides
from tic_grpo_cli.config.schema import register_configs
from tic_grpo_cli.config.validation import validate_eval, validate_train
from tic_grpo_cli.errors import UserError


@pytest.fixture(autouse=True)
def _schemas():
    register_configs()


def refused(command: str, *args: str) -> str:
    validate = validate_eval if command == "eval" else validate_train
    with pytest.raises(UserError) as err:
        overrides.check(command, list(args), validate)
    return str(err.value)


@pytest.mark.parametrize(
    "override", ["trainer.max_step=5", "+trainer.max_step=5", "++trainer.max_step=5"]
)
def test_a_misspelt_key_is_refused_with_or_without_plus(override):
    assert refused("train", override) == (
        "trainer.max_step: no such config key; did you mean trainer.max_steps?"
    )


@pytest.mark.parametrize(
    "override,expected",
    [
        ("max_steps=5", "did you mean trainer.max_steps?"),  # the group left out
        ("algorithm.lr=1", "did you mean trainer.lr"),  # the key under another group
        ("~trainer.max_step", "did you mean trainer.max_steps?"),
        ("+extra.note=hi", "`tic-grpo train --cfg job` lists them"),  # nothing close
        # Other trainers' names for our keys: nothing close in spelling.
        ("trainer.num_generations=4", "did you mean trainer.group_size?"),
        ("trainer.learning_rate=1e-6", "did you mean trainer.lr?"),
        ("algorithm.beta=0.04", "did you mean algorithm.kl_coef?"),
        ("actor_rollout_ref.rollout.n=4", "did you mean trainer.group_size?"),
        ("epsilon=0.2", "did you mean algorithm.epsilon_low or algorithm.epsilon_high?"),
        ("loss_type=dr_grpo", "did you mean algorithm=dr_grpo? (`tic-grpo train --help` lists"),
        ("algorithm.adv_estimator=grpo", "did you mean algorithm=grpo?"),
    ],
)
def test_unknown_keys_name_the_closest_valid_ones(override, expected):
    assert expected in refused("train", override)


def test_every_synonym_names_a_real_key():
    from tic_grpo_cli.config.overrides import SYNONYMS

    keys = overrides._all_keys(compose_config())
    named = {key for keys_text in SYNONYMS.values() for key in keys_text.split()}
    assert sorted(named - set(keys)) == []


def test_unknown_group_options_get_a_suggestion_and_the_list():
    message = refused("train", "algorithm=tic_grpo")
    assert message.startswith("algorithm=tic_grpo: no such option; did you mean tic or")
    allowed = message.split("(allowed: ")[1].rstrip(")").split(", ")
    assert {"grpo", "tic", "dapo"} <= set(allowed) and allowed == sorted(allowed)
    assert "did you mean smollm2_135m?" in refused("eval", "model=smol")


def test_bad_enum_values_get_a_suggestion():
    with pytest.raises(
        UserError, match=r"algorithm\.name: got 'tics'; did you mean tic\? \(allowed"
    ):
        overrides.check("train", ["-m", "algorithm.name=grpo,tics"], validate_train)


def test_valid_overrides_pass():
    overrides.check(
        "train",
        ["trainer.max_steps=5", "algorithm=grpo", "+experiment=paper_fig1", "~experiment"],
        validate_train,
    )
    # A free-form value (an Any field) may take sub-keys; Hydra's flags are left to Hydra.
    overrides.check(
        "train",
        ["dataset=jsonl", "dataset.path=a", "+dataset.data_files.train=a.jsonl", "--cfg", "job"],
        validate_train,
    )
    overrides.check("eval", ["checkpoint.path=x", "eval.num_samples=4", "eval.temperature=1"])


@pytest.mark.parametrize(
    "args,expected",
    [
        (["-m", "algorithm=grpo,foo"], "algorithm=foo: no such option"),
        (["-m", "seed=0,1", "trainer.max_step=1,2"], "trainer.max_step: no such config key"),
        # Every value is checked, not just the first job's.
        (["-m", "algorithm.kl_estimator=k3,k4"], "algorithm.kl_estimator: got 'k4'"),
        (["-m", "trainer.minibatch_size=8,3"], "trainer.minibatch_size: 3 must divide"),
        (["-m", "seed=range(0,2)", "trainer.lr=choice(1e-5,x)"], "trainer.lr: Value 'x'"),
    ],
)
def test_every_value_of_a_sweep_is_checked_before_the_first_job(args, expected):
    assert refused("sweep", *args).startswith(expected)


def test_a_sweep_without_multirun_says_how_to_run_it():
    # Hydra's answer was five lines ("Ambiguous value for argument ...").
    message = refused("train", "seed=0,1")
    assert message.startswith("seed=0,1: several values need a multirun: tic-grpo train -m")
    overrides.check("train", ["-m", "seed=0,1"], validate_train)
    overrides.check("train", ["dataset.operators=[+,-]"], validate_train)  # a list is one value


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-m", "tic_grpo_cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**env, "WANDB_MODE": "disabled"},
        timeout=120,
    )


@pytest.mark.parametrize(
    "args,line",
    [
        (
            ("train", "+trainer.max_step=5"),
            "error: trainer.max_step: no such config key; did you mean trainer.max_steps?",
        ),
        (("sweep", "algorithm=grpo,foo"), "error: algorithm=foo: no such option"),
    ],
)
def test_the_cli_answers_a_typo_in_one_line_and_runs_nothing(tmp_path, args, line):
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.splitlines()[0].startswith(line) and len(out.stderr.splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_a_misspelt_subcommand_gets_a_suggestion(tmp_path):
    out = cli("trian", "trainer.max_steps=1", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: unknown subcommand 'trian'; did you mean train? (choose")


def test_a_group_option_from_the_users_own_config_folder_is_accepted(tmp_path):
    # `hydra.searchpath` is Hydra's way to add one's own options (`dataset=my_task`); the
    # check sees them, and still corrects a misspelling of them.
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "my_task.yaml").write_text("kind: arithmetic\ntrain_size: 64\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    overrides.check("train", [search, "dataset=my_task"], validate_train)
    assert "did you mean my_task?" in refused("train", search, "dataset=my_tsk")
    assert refused("train", "dataset=my_task").startswith("dataset=my_task: no such option")
