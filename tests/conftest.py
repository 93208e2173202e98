"""Suite-wide guards (no test reaches a model hub; GPU tests skip cleanly on CPU) and the one
helper that composes a config the way the CLI does.

`tests/` mirrors the package: the tests of `tic_grpo_cli/train/update.py` are in
`tests/train/test_update.py`. Each folder is a package, so same-named test files in two
folders (`data/test_chain.py`, `analysis/studies/test_chain.py`) do not collide.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig

from tic_grpo_cli.config.overrides import composition_error
from tic_grpo_cli.config.schema import register_configs
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.runs.run_dir import register_resolvers

# Hub names must never trigger a download here; loading code is tested on local paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# A training run of the tiny model that takes seconds: 8 steps (K = 2 minibatches of 2
# prompts x 4 completions per rollout), with an evaluation and a checkpoint every 4 steps.
SMALL_RUN = (
    "trainer.max_steps=8",
    "trainer.rollout_batch_size=4",
    "trainer.group_size=4",
    "trainer.minibatch_size=2",
    "trainer.eval_every=4",
    "trainer.eval_limit=16",
    "trainer.save_every=4",
    "trainer.log_every=2",
    "trainer.log_samples_every=4",
    "wandb.mode=disabled",
    "hardware.num_threads=1",
)


def compose_config(*overrides: str, name: str = "train", hydra: bool = False) -> DictConfig:
    """The config `tic-grpo <name> <overrides>` would run with (name: train, eval or sweep),
    composed against the registered schemas; `hydra=True` keeps the `hydra` node (run dirs,
    launchers, sweeper params). A data set's node alone is `compose_config("dataset=x").dataset`.

    Raises UserError, as the CLI reports it, on an unknown key or option or a bad value:
    ConfigError naming the key for a value outside a field's choices."""
    register_configs()
    register_resolvers()  # ${tic_grpo.pid:} in the run dirs: the CLI registers it on import
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        try:
            return compose(name, overrides=list(overrides), return_hydra_config=hydra)
        except HydraException as err:
            raise composition_error(err, list(overrides)) from err


def kill_and_resume(
    tmp_path: Path, overrides: list[str], timeout: int = 300, saved_at: int = 4
) -> tuple[Path, Path]:
    """Two `tic-grpo train <overrides>` runs in subprocesses under tmp_path: `full`,
    uninterrupted, and `killed`, SIGKILLed once rows past its step-`saved_at` checkpoint are
    logged (so resuming must drop them) and then resumed with `resume=auto`. Returns
    (full, killed): an exact resume makes their metrics.jsonl equal but for timings."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    base = [sys.executable, "-m", "tic_grpo_cli", "train", *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    subprocess.run([*base, f"hydra.run.dir={full}"], check=True, env=env,
                   capture_output=True, timeout=timeout)  # fmt: skip
    proc = subprocess.Popen([*base, f"hydra.run.dir={killed}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and not any(
            r.get("step", 0) > saved_at for r in read_jsonl(killed / "metrics.jsonl")
        ):
            time.sleep(0.02)
    finally:  # a test timeout too must not leave the run training
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (killed / "checkpoints" / f"step_{saved_at}").is_dir()
    assert not (killed / "summary.json").exists()
    subprocess.run([*base, f"hydra.run.dir={killed}", "resume=auto"], check=True, env=env,
                   capture_output=True, timeout=timeout)  # fmt: skip
    return full, killed


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
