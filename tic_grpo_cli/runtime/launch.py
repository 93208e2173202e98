"""Starting the ranks: `tic-grpo train hardware=ddp|fsdp` launches one process per device
through torchrun's launcher (`launch`), and each of them joins the process group (`setup`)
and gets the `Dist` handle of distributed.py. Under torchrun or SLURM the ranks exist
already and only join.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from tic_grpo_cli.errors import UserError, program
from tic_grpo_cli.runtime.distributed import SINGLE, Dist

log = logging.getLogger("tic_grpo")

# Rank 0 evaluates and writes checkpoints alone while the others wait in a collective; the
# default timeouts (10 min NCCL, 30 min gloo) would turn a long evaluation into a crash.
TIMEOUT = timedelta(hours=2)
# torchrun sets these; without them there is no process group to join.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# How long `launch` lets interrupted ranks finish their rollout and checkpoint.
SHUTDOWN_SECONDS = 600


def under_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def setup(hardware) -> Dist:
    """Join the process group torchrun prepared (`hardware.distributed` ddp or fsdp), or
    return the single-process handle. On GPUs each rank takes the device of its local rank;
    the backend is nccl there and gloo on the CPU unless `hardware.backend` says otherwise."""
    mode = hardware.distributed
    if mode == "none":
        return SINGLE
    if not under_torchrun():
        raise UserError(
            f"hardware.distributed={mode} runs one process per device: start it with "
            f"`tic-grpo train hardware={mode} ...` (which launches them) or "
            f"`torchrun --nproc_per_node N -m tic_grpo_cli train hardware={mode} ...`"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    on_gpu = hardware.device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        # models.resolve_device then picks this rank's GPU as the current one.
        torch.cuda.set_device(local_rank)
    backend = hardware.backend if hardware.backend != "auto" else ("nccl" if on_gpu else "gloo")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=TIMEOUT)
        atexit.register(_shutdown)
    rank = torch.distributed.get_rank()
    if rank != 0:
        # One voice on the console and in train.log; warnings and errors still show.
        log.setLevel(logging.WARNING)
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return Dist(mode, rank, torch.distributed.get_world_size(), local_rank, device)


def _shutdown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def needs_launch(hardware) -> bool:
    """`tic-grpo train hardware=ddp|fsdp` outside torchrun: this process starts the ranks."""
    return hardware.distributed != "none" and not under_torchrun()


def rendezvous() -> tuple[int, str, str]:
    """(nodes, endpoint, run id) for the launcher: this machine alone, or all nodes of the
    SLURM job this process runs in, meeting on its first node at a port chosen by job id."""
    if int(os.environ.get("SLURM_JOB_NUM_NODES", "1")) <= 1:
        return 1, "localhost:0", str(uuid.uuid4())
    # hydra-submitit-launcher's dependency; it reads SLURM's variables and node list.
    from submitit.slurm.slurm import SlurmJobEnvironment

    job = SlurmJobEnvironment()
    port = 20000 + int(hashlib.sha256(job.job_id.encode()).hexdigest(), 16) % 20000
    return job.num_nodes, f"{job.hostnames[0]}:{port}", f"slurm-{job.job_id}"


def launch(nproc: int, argv: list[str], run_dir: Path) -> dict[str, Any]:
    """Run `python <argv>` as `nproc` ranks per node through torchrun's launcher and wait for
    them; returns the summary rank 0 wrote to `run_dir`. On one machine this is what
    `torchrun --standalone --nproc_per_node nproc` does; in a SLURM job of several nodes
    (one task per node, as `hardware=slurm` submits), every node's launcher meets the others
    on the job's first node."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise UserError(f"hardware.nproc_per_node must be >= 1, got {nproc}")
    nodes, endpoint, run_id = rendezvous()
    # The ranks run in their own session; the launcher forwards SIGINT/SIGTERM to them, and
    # they need time to finish the rollout and write a checkpoint before SIGKILL. Launchers
    # before the shutdown_timeout field (torch 2.6) give them their fixed 30 s.
    fields = {f.name for f in dataclasses.fields(LaunchConfig)}
    grace = {"shutdown_timeout": SHUTDOWN_SECONDS} if "shutdown_timeout" in fields else {}
    config = LaunchConfig(
        min_nodes=nodes, max_nodes=nodes, nproc_per_node=nproc, run_id=run_id,
        rdzv_backend="c10d", rdzv_endpoint=endpoint, max_restarts=0, **grace,
    )  # fmt: skip
    log.info("launching %d processes: %s %s", nproc, sys.executable, " ".join(argv))
    try:
        elastic_launch(config, sys.executable)(*argv)
    except SignalException as err:
        raise UserError(
            f"stopped by {err.sigval.name}, the ranks saved a checkpoint in {run_dir}; "
            f"continue with: {program()} train resume={run_dir}"
        ) from None
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        raise UserError(
            f"rank {rank} failed (exit code {failure.exitcode}); its error is "
            f"printed above and in {run_dir}/train.log"
        ) from None
    summary = Path(run_dir) / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {}
