"""How many CPU threads torch uses: a fixed number, or the cores other processes leave idle.

Why adapt: torch's intra-op pool waits at the end of every parallel operator for all its
threads. When another process holds one of the cores, every operator waits for a
scheduler slice, and a 2-thread job on 2 cores ran 20-50x slower than on 1 thread
(docs/benchmarks.md); on an idle machine the same job runs 1.5x faster on 2 threads. So
``hardware.num_threads: null`` (the default) takes the idle cores at start and re-checks
after every rollout, giving cores back when other processes take them and taking them
again once they are free. OMP_NUM_THREADS, when set (torchrun, the parallel sweep launcher),
fixes the pool instead, as does a number in ``hardware.num_threads``.

The thread count changes results at the rounding level (reductions split across threads
sum in another order), and RL amplifies that: the same seed on 1 and 2 threads diverges
after a few hundred steps. Fix the count for bit-reproducible runs.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import psutil
import torch

log = logging.getLogger(__name__)

# The machine-wide CPU times that are work (not idle, iowait or steal); a system without
# one of them (irq and softirq are Linux's) counts it as 0.
_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")
# A core counts as free when other processes leave at least this much of it.
_FREE_SHARE = 0.7
# Load is averaged over at least this long, so a short burst (an editor, a `git status`)
# does not resize the pool, while a second job shows within one window.
_WINDOW_S = 2.0


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (psutil reads them:
    /proc/stat on Linux); None where they cannot be read."""
    try:
        times = psutil.cpu_times()
    except (OSError, psutil.Error):
        return None
    return sum(getattr(times, name, 0.0) for name in _BUSY_FIELDS)


def own_cpu_seconds() -> float:
    t = os.times()  # this process, all its threads, and reaped children
    return t.user + t.system + t.children_user + t.children_system


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class _Mark:
    wall: float
    busy: float
    own: float

    @classmethod
    def now(cls) -> _Mark | None:
        busy = busy_cpu_seconds()
        return None if busy is None else cls(time.perf_counter(), busy, own_cpu_seconds())


class CpuThreads:
    """torch's thread count for one process: ``fixed`` threads, or adaptive when None.

    ``share`` divides the machine among processes of one job (DDP ranks on one node)."""

    def __init__(self, fixed: int | None, share: int = 1):
        # OMP_NUM_THREADS, when set (by torchrun, by the parallel sweep launcher, by the
        # user), is a decision already made about this process's share of the machine.
        env = os.environ.get("OMP_NUM_THREADS", "")
        self.fixed = fixed or (int(env) if env.isdigit() and int(env) > 0 else None)
        self.cores = max(1, usable_cores() // max(1, share))
        self.window = _WINDOW_S
        self._mark: _Mark | None = None

    def start(self) -> int:
        """Set the pool for the run's start; measures others' load over a short window."""
        if self.fixed:
            return self._set(self.fixed)
        self._mark = _Mark.now()
        if self._mark is None:  # no machine-wide CPU times: every core, not adaptive
            return self._set(self.cores)
        time.sleep(0.2)
        threads = self._resize(min_wall=0.0, announce=False)
        log.info(
            "CPU threads: %d of %d cores (adaptive: hardware.num_threads=null)", threads, self.cores
        )
        return threads

    def adjust(self) -> int:
        """Re-check the load once a window has passed; resize the pool if it changed."""
        if self.fixed or self._mark is None:
            return torch.get_num_threads()
        return self._resize(min_wall=self.window, announce=True)

    def _resize(self, min_wall: float, announce: bool) -> int:
        now = _Mark.now()
        wall = now.wall - self._mark.wall
        if wall < min_wall or wall <= 0:
            return torch.get_num_threads()
        other = max(0.0, now.busy - self._mark.busy - (now.own - self._mark.own)) / wall
        self._mark = now
        threads = max(1, min(self.cores, int(self.cores - other + 1 - _FREE_SHARE)))
        if announce and threads != torch.get_num_threads():
            log.info(
                "CPU threads: %d (other processes use %.1f of %d cores)", threads, other, self.cores
            )
        return self._set(threads)

    @staticmethod
    def _set(threads: int) -> int:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads
