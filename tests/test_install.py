"""Installing where the GPUs are: the package accepts the torch a GPU machine already has
(a build for its CUDA), while `make` installs the pinned CPU build first."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def torch_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = [r for r in map(Requirement, project["dependencies"]) if r.name == "torch"]
    return requirement


def makefile_torch_pin() -> str:
    pins = re.findall(r"\btorch==([\w.+]+)", (ROOT / "Makefile").read_text())
    assert len(pins) == 1, "the Makefile installs one pinned torch"
    return pins[0]


@pytest.mark.parametrize("version", ["2.6.0", "2.8.0+cu128", "2.11.0+cu130", "2.13.0+cpu"])
def test_torch_builds_a_gpu_user_may_have_are_accepted(version):
    assert torch_requirement().specifier.contains(version)


def test_torch_older_than_tested_is_refused():
    # 2.6 is the oldest torch the package was trained and tested with (and transformers 5's floor).
    assert not torch_requirement().specifier.contains("2.5.1")


def test_make_installs_the_pinned_cpu_torch_before_the_package():
    makefile = (ROOT / "Makefile").read_text()
    pin = makefile_torch_pin()
    assert torch_requirement().specifier.contains(pin)
    assert makefile.index(f"torch=={pin}") < makefile.index('-e ".[dev]"')
    assert Version(pin) >= Version("2.6")


def _fake_installed_torch(venv: Path, version: str) -> None:
    """Register an installed torch by its metadata alone (what pip's resolver reads), standing
    in for a multi-GB CUDA build."""
    (site,) = venv.glob("lib/python*/site-packages")
    dist = site / f"torch-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    (dist / "INSTALLER").write_text("pip\n")
    (dist / "RECORD").write_text("")


@pytest.mark.slow  # resolves every dependency against the package index: ~1 min
def test_pip_install_keeps_the_torch_a_gpu_machine_has(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    _fake_installed_torch(venv, "2.11.0+cu130")
    report = tmp_path / "report.json"
    subprocess.run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--report",
            str(report),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    planned = {item["metadata"]["name"] for item in json.loads(report.read_text())["install"]}
    assert "tic-grpo" in planned
    assert "torch" not in planned  # the machine's own 2.11.0+cu130 stays
