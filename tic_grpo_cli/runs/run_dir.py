"""The run directory: which one a run writes to, and that no one else writes to it.

- Where: `hydra.run.dir` in conf/train.yaml, `outputs/train/<date>/<time>-<pid>`. The
  `${tic_grpo.pid:}` suffix keeps two runs started in the same second apart (under torchrun
  it is the launcher's pid, the same for every local rank). `tic-grpo train resume=<run>`
  writes into that run (cli.py adds `hydra.run.dir=<run>`), `hydra.run.dir=...` elsewhere.
- Who: `RunDirGuard`, a Hydra callback, locks the dir before Hydra writes anything into it
  (`run.lock`: an flock held while the process lives, holding the holder's pid and host), so
  a second live run on it stops with one line naming the holder. The file goes when the run
  ends (finished, failed or stopped by a signal); the kernel drops the flock when its
  process dies, so a killed run's leftover lock is taken over by the next one. (Not
  `filelock`: it keeps its file after release, because removing it races with a process
  waiting on the old file; `_lock_current_file` closes that race, so the file can go.)
- Tidy: a command that fails before writing results (a bad value, a missing file) removes
  the run dir it created, instead of leaving an empty one behind.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tic_grpo_cli.errors import UserError

if TYPE_CHECKING:
    from tic_grpo_cli.runtime.distributed import Dist

log = logging.getLogger("tic_grpo")

LOCK_FILE = "run.lock"
# Set for the processes a locked run starts (the ranks of hardware=ddp|fsdp): they write
# into the dir their launcher holds.
HELD_ENV = "TIC_GRPO_RUN_DIR_HELD"
# What Hydra (and the guard) write before a job runs, and W&B's own files (wandb.init comes
# before the step-0 evaluation): a dir holding only these has no results.
_BOOKKEEPING = {".hydra", LOCK_FILE, "wandb"}
# The run dirs this process holds. An flock belongs to an open file, so a second lock by
# the same process would fail: a job run again in-process (a sweep continued after an
# interrupt, cli.main called twice) takes over the lock it still holds.
_HELD: dict[Path, RunLock] = {}


def process_tag() -> str:
    """The run dir suffix of this process: its pid, or under torchrun its launcher's (the
    parent of every local rank), so the ranks of one launch agree."""
    return str(os.getppid() if "LOCAL_RANK" in os.environ else os.getpid())


def register_resolvers() -> None:
    """`${tic_grpo.pid:}` for `hydra.run.dir` / `hydra.sweep.dir` (see the module doc)."""
    OmegaConf.register_new_resolver("tic_grpo.pid", process_tag, replace=True)


def shared(run_dir: Path, dist: Dist) -> Path:
    """Rank 0's run dir, on every rank, created. Ranks started by torchrun each got a run
    dir from Hydra's clock; rank 0's is the one they share."""
    run_dir = Path(dist.broadcast_object(str(run_dir)))
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    """An exclusive flock on `run_dir/run.lock`, which names its holder as JSON."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise UserError naming the live holder. A lock file left by a
        process that died (killed, crashed) is taken over, with a warning naming it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = self._lock_current_file()
        previous = _read_holder(fd)
        if previous:
            log.warning("taking over %s from %s, which is no longer running", self.path,
                        _describe(previous))  # fmt: skip
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%F %T")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd

    def _lock_current_file(self) -> int:
        """An fd of `run.lock` with the flock held, raising UserError if a live process
        holds it. A holder removes the file on release while still holding the flock, so
        a file locked after it was unlinked is a stale one: open the path again."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read_holder(fd))
                os.close(fd)
                raise UserError(
                    f"run dir {self.run_dir} is in use by {holder}; wait for it to end, or "
                    "write this run elsewhere with hydra.run.dir=<another dir>"
                ) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        """Remove the file, then drop the flock: a finished run leaves no run.lock behind. A
        process that opened the file before it went sees the unlinked file when it gets the
        flock and opens the path again (`_lock_current_file`). A killed process leaves its
        file, and the next run takes it over."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):  # a user deleted it meanwhile
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    alive = holder.get("host") != socket.gethostname() or _alive(int(holder.get("pid", -1)))
    state = "" if alive else ", not running"
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')}{state})"


def holds_results(run_dir: Path) -> bool:
    """Whether the dir holds anything but Hydra's bookkeeping and the console log."""
    return any(p.name not in _BOOKKEEPING and p.suffix != ".log" for p in run_dir.iterdir())


class RunDirGuard(Callback):
    """Hydra callback (conf/train.yaml): lock the run dir before the job writes into it,
    release it after; remove the dir if this run created it and failed before writing
    results. In a multirun each job dir is guarded the same way."""

    def __init__(self) -> None:
        self.lock: RunLock | None = None
        self.created: Path | None = None  # the topmost dir this run created, if any

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # as run_job does, for ${hydra:...}
        self._take(Path(OmegaConf.select(config, "hydra.run.dir")))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.lock is None:  # a multirun job (a single run was locked in on_run_start)
            self._take(Path(config.hydra.runtime.output_dir))

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish()

    def _take(self, run_dir: Path) -> None:
        run_dir = run_dir.absolute()
        if os.environ.get(HELD_ENV) == str(run_dir) or int(os.environ.get("RANK", "0")) != 0:
            return  # a rank: the launcher (or rank 0 under torchrun) holds the dir
        missing = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
        self.created = missing[-1] if missing else None
        self.lock = _HELD.get(run_dir) or RunLock(run_dir)
        if run_dir not in _HELD:
            try:
                self.lock.acquire()
            except UserError as err:
                self.lock = None
                print(f"error: {err}", file=sys.stderr)
                raise SystemExit(2) from None
            _HELD[run_dir] = self.lock
        os.environ[HELD_ENV] = str(run_dir)
        # Errors end the process with SystemExit (cli._fail), past Hydra's on_run_end.
        atexit.register(self.finish)

    def finish(self) -> None:
        """Release the lock; remove the run dir if this run made it and wrote no results."""
        if self.lock is None:
            return
        run_dir, self.lock = self.lock.run_dir, self.lock.release()
        _HELD.pop(run_dir, None)
        os.environ.pop(HELD_ENV, None)
        if self.created and run_dir.is_dir() and not holds_results(run_dir):
            _close_logs_in(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            # And the parents it made (outputs/train/<date>), unless another run is in them.
            for parent in run_dir.parents:
                if parent != self.created and self.created not in parent.parents:
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break


def _close_logs_in(run_dir: Path) -> None:
    """Detach the log file handlers writing into `run_dir` (Hydra's train.log), so nothing
    logged later recreates the file in a removed dir."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(
            run_dir
        ):
            root.removeHandler(handler)
            handler.close()
