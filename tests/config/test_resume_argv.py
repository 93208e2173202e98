"""`train resume=<run>` on the command line: the run's own overrides, then the given ones."""

from __future__ import annotations

import os
import subprocess
import sys

from tic_grpo_cli.config.resume_argv import resume_argv

ENV = {**os.environ, "WANDB_MODE": "disabled"}


def test_cfg_job_shows_a_resumed_runs_config(tmp_path):
    """`--cfg job resume=<run>` ended in argparse's "unrecognized arguments": the run's saved
    overrides came before the flag and the given ones after it."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- dataset=chain\n- seed=3\n")
    argv = resume_argv(["--cfg", "job", f"resume={run}", "trainer.max_steps=9"])
    assert argv[:2] == ["--cfg", "job"]
    assert argv[2:5] == ["dataset=chain", "seed=3", f"resume={run}"]
    assert "trainer.max_steps=9" in argv and not any(a.startswith("-") for a in argv[2:])
    out = subprocess.run(
        [sys.executable, "-m", "tic_grpo_cli", "train", "--cfg", "job", f"resume={run}",
         "trainer.max_steps=9"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "kind: chain" in out.stdout and "max_steps: 9" in out.stdout and "seed: 3" in out.stdout
