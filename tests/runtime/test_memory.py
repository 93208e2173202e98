"""Freed tensors leave the process's RSS (runtime/memory.py), as they must for a training
step's activations not to pile up in RSS on the CPU (docs/benchmarks.md, "Memory")."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.conftest import SMALL_RUN, compose_config

PROBE = """
import sys, torch
from tic_grpo_cli.runtime.memory import return_freed_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "trainer":
    assert return_freed_memory()
big = torch.ones(4 << 20)  # 16 MiB, freed: glibc's own mmap threshold rises to it
del big
before = rss_mb()
blocks = [torch.ones(1 << 20) for _ in range(100)]  # 100 activations of 4 MiB
newest = blocks[-1]  # still alive, as the next layer's input is
del blocks
print(round(rss_mb() - before))
"""

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not sys.platform.startswith("linux"),
    reason="glibc's malloc on Linux",
)


def retained_mb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    return int(out.stdout.split()[-1])


def test_freed_tensors_leave_rss_once_the_trainer_set_malloc_up():
    # glibc alone keeps the 99 freed blocks (396 MiB) under the live one; fixed thresholds
    # give them back, leaving the one alive.
    assert retained_mb("default") > 300
    assert retained_mb("trainer") < 50


def test_training_on_the_cpu_sets_malloc_up(monkeypatch, tmp_path):

    from tic_grpo_cli.runtime import memory
    from tic_grpo_cli.train import loop

    calls = []
    monkeypatch.setattr(memory, "return_freed_memory", lambda: calls.append(1) or True)
    cfg = compose_config(*SMALL_RUN, "trainer.max_steps=2", "trainer.eval_every=0")
    loop.train(cfg, tmp_path / "tiny")
    assert calls == []  # 1M parameters: RSS is no concern, the page faults would be
    monkeypatch.setattr(memory, "FREE_MEMORY_FROM", 1)  # as if the model were large
    loop.train(cfg, tmp_path / "large")
    assert calls == [1]
