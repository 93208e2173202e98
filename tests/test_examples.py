"""The README's own-data example (examples/my_task) loads and scores as the README says."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from tests.conftest import compose_config
from tic_grpo_cli.data import build_task

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_task"


def example_dataset(path: Path, tmp_path: Path, *extra: str):
    """The `dataset=jsonl` node for the data at `path`, its cache in `tmp_path`."""
    cache = f"dataset.cache_dir={tmp_path}"
    return compose_config("dataset=jsonl", f"dataset.path={path}", cache, *extra).dataset


def test_the_example_directory_gives_both_splits(tmp_path):
    fields = ("dataset.prompt_field=problem", "dataset.answer_field=solution")
    task = build_task(example_dataset(EXAMPLE, tmp_path, *fields))
    assert (len(task.train), len(task.test)) == (60, 12)
    example = task.test[0]
    assert example["prompt"] == example["question"] == "65+46="  # the first line of test.jsonl
    assert example["answer"] == str(example["solution"]) == "111"


def test_the_example_reward_gives_partial_credit_and_counts_only_exact_sums():
    sys.path.insert(0, str(ROOT))
    try:
        rewards = importlib.import_module("examples.my_task.rewards")
    finally:
        sys.path.remove(str(ROOT))
    got = rewards.close(["68", " 70\n", "sixty", "90"], solution=[68, 68, 68, 68], problem=[""] * 4)
    # 0 off, 2 off (1 - 0.2), not a number, 22 off (floored at 0).
    assert got == {"reward": [1.0, 0.8, 0.0, 0.0], "correct": [True, False, False, False]}
    assert rewards.brevity(["68", "1234", "123456"]) == [0.0, -0.1, -0.30000000000000004]


def test_the_verl_converter_writes_what_the_loader_reads_as_verl(tmp_path):
    out = tmp_path / "verl"
    subprocess.run([sys.executable, str(EXAMPLE / "to_verl.py"), str(out)], check=True)
    task = build_task(example_dataset(out, tmp_path))  # no field keys: verl is recognised
    assert (len(task.train), len(task.test)) == (60, 12)
    example = task.train[0]
    assert example["data_source"] == "my_task" and example["question"].endswith("=")
    assert task.score([example["answer"]], [example]).correct == [True]
