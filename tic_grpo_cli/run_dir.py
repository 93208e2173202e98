"""The run directory: where a run writes (Hydra's `hydra.run.dir`, conf/train.yaml) and
making sure every rank of a run writes to the same one."""

from __future__ import annotations

from pathlib import Path

from tic_grpo_cli.distributed import Dist


def shared(run_dir: Path, dist: Dist) -> Path:
    """Rank 0's run dir, on every rank, created. Ranks started by torchrun each got a run
    dir from Hydra's clock; rank 0's is the one they share."""
    run_dir = Path(dist.broadcast_object(str(run_dir)))
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir
