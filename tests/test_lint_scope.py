"""`make test` lints the project's own code, never a user's file beside the checkout (the
README suggests a `my_rewards.py` there), and `make test` and `make lint` lint alike."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
# Unused imports and a missing blank line: what a quick reward file of one's own looks like.
SLOPPY = (
    "import os\nimport sys\ndef close(completions, **fields):\n  return [0.0] * len(completions)\n"
)


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed")
def test_ruff_skips_a_users_reward_file_but_not_the_package(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "my_rewards.py").write_text(SLOPPY)
    (tmp_path / "tic_grpo_cli").mkdir()
    (tmp_path / "tic_grpo_cli" / "mine.py").write_text(SLOPPY)
    for command in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [RUFF, *command], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert result.returncode == 1, result.stdout  # the package's file fails...
        assert "my_rewards.py" not in result.stdout + result.stderr  # ...the user's is not read
        assert "mine.py" in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_runs_the_same_lint_as_make_lint():
    def commands(target: str) -> list[str]:
        out = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        return [line for line in out.splitlines() if "ruff" in line]

    lint = commands("lint")
    assert lint and any("format --check" in line for line in lint)
    assert commands("test") == lint
