"""One-line errors: the closest spellings of a misspelt name, and the command printed to continue."""

from __future__ import annotations

import sys

import pytest

from tic_grpo_cli.errors import suggest


@pytest.mark.parametrize(
    "word,options,expected",
    [
        ("tic_grpo", ["grpo", "tic", "dapo", "gspo"], "tic"),  # a prefix beats a longer match
        ("smol", ["tiny", "smollm2_135m"], "smollm2_135m"),
        ("max_step", ["max_steps", "warmup_steps", "max_nonfinite_steps"], "max_steps"),
        ("gpus", ["cpu", "gpu", "ddp"], "gpu"),
    ],
)
def test_suggest_puts_the_intended_name_first(word, options, expected):
    assert suggest(word, options)[0] == expected


def test_suggest_keeps_only_names_near_the_best():
    # warmup_steps is a fair difflib match for max_step, but much worse than max_steps.
    assert suggest("max_step", ["max_steps", "warmup_steps", "max_nonfinite_steps"]) == [
        "max_steps"
    ]
    assert suggest("zzz", ["max_steps", "tic"]) == []


def test_printed_commands_call_the_program_the_way_that_works(tmp_path, monkeypatch):
    """`make train` runs .venv/bin/tic-grpo with the venv not on PATH: a hint saying
    `tic-grpo ...` failed with 'command not found' there."""
    from tic_grpo_cli import errors
    from tic_grpo_cli.errors import program

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "tic-grpo"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(errors, "ENTRY_POINT", str(script))  # kept by cli.main
    assert program() == str(script)  # not on PATH: the path it was started by
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert program() == "tic-grpo"  # on PATH and the same file: the short name
    monkeypatch.setattr(errors, "ENTRY_POINT", "/somewhere/tic_grpo_cli/__main__.py")
    assert program() == f"{sys.executable} -m tic_grpo_cli"  # another tic-grpo on PATH
