"""The CPU thread pool: fixed, or sized to the cores other processes leave idle."""

from __future__ import annotations

import os

import pytest
import torch

from tic_grpo_cli.runtime import threads


@pytest.fixture(autouse=True)
def restore_pool(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class FakeMachine:
    """A 4-core machine whose other processes use `other` cores; we use `own` cores."""

    def __init__(self, monkeypatch):
        self.wall = self.busy = self.mine = 0.0
        self.other, self.own = 0.0, 1.0
        monkeypatch.setattr(threads, "usable_cores", lambda: 4)
        monkeypatch.setattr(threads, "busy_cpu_seconds", lambda: self.busy)
        monkeypatch.setattr(threads, "own_cpu_seconds", lambda: self.mine)
        monkeypatch.setattr(threads.time, "perf_counter", lambda: self.wall)
        monkeypatch.setattr(threads.time, "sleep", self.run)

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.mine += self.own * seconds
        self.busy += (self.own + self.other) * seconds


def test_a_fixed_count_is_set_and_kept(monkeypatch):
    machine = FakeMachine(monkeypatch)
    pool = threads.CpuThreads(fixed=3)
    assert pool.start() == 3 and torch.get_num_threads() == 3
    machine.other = 4.0
    machine.run(1.0)
    assert pool.adjust() == 3


@pytest.mark.parametrize(
    "other,expected",
    [(0.0, 4), (0.2, 4), (0.5, 3), (1.0, 3), (2.6, 1), (3.9, 1), (8.0, 1)],
)
def test_adaptive_takes_the_idle_cores(monkeypatch, other, expected):
    machine = FakeMachine(monkeypatch)
    machine.other = other
    assert threads.CpuThreads(fixed=None).start() == expected
    assert torch.get_num_threads() == expected


def test_adaptive_gives_cores_back_and_takes_them_again(monkeypatch):
    machine = FakeMachine(monkeypatch)
    pool = threads.CpuThreads(fixed=None)
    assert pool.start() == 4
    machine.other = 2.0  # a second job starts: two cores taken
    machine.run(3.0)
    assert pool.adjust() == 2
    machine.other = 0.0  # it ends
    machine.run(3.0)
    assert pool.adjust() == 4


def test_ranks_on_one_node_share_the_cores(monkeypatch):
    FakeMachine(monkeypatch)
    assert threads.CpuThreads(fixed=None, share=2).start() == 2
    assert threads.CpuThreads(fixed=None, share=8).start() == 1


def test_without_proc_stat_every_core_is_used(monkeypatch):
    FakeMachine(monkeypatch)
    monkeypatch.setattr(threads, "busy_cpu_seconds", lambda: None)
    pool = threads.CpuThreads(fixed=None)
    assert pool.start() == 4
    assert pool.adjust() == 4


def test_a_short_burst_does_not_resize_the_pool(monkeypatch):
    machine = FakeMachine(monkeypatch)
    pool = threads.CpuThreads(fixed=None)
    assert pool.start() == 4
    machine.other = 3.0  # every other core busy, but only for 0.2 s
    machine.run(0.2)
    assert pool.adjust() == 4  # within the window: not even measured
    machine.other = 0.0
    machine.run(2.0)  # over the whole 2.2 s window others used 0.27 cores
    assert pool.adjust() == 4
    machine.other = 3.0  # the same load for a whole window is a job: 3 cores taken
    machine.run(2.0)
    assert pool.adjust() == 1


def test_omp_num_threads_fixes_the_pool(monkeypatch):
    machine = FakeMachine(monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what torchrun and the parallel launcher set
    pool = threads.CpuThreads(fixed=None)
    assert pool.start() == 1
    machine.run(3.0)
    assert pool.adjust() == 1
    assert threads.CpuThreads(fixed=3).start() == 3  # hardware.num_threads still wins


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_busy_cpu_seconds_are_the_machines_work_time():
    """Work time as /proc/stat counts it: user, nice, system, irq and softirq (not idle,
    iowait or steal), all processes since boot."""

    def from_proc_stat() -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields[i] for i in (0, 1, 2, 5, 6)) / os.sysconf("SC_CLK_TCK")

    before = from_proc_stat()
    busy = threads.busy_cpu_seconds()
    after = from_proc_stat()
    assert before - 0.05 <= busy <= after + 0.05
