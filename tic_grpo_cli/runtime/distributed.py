"""Several processes, one per device: the `Dist` handle and the collectives the loop needs.

`hardware=ddp` and `hardware=fsdp` run one process (rank) per device, started by torchrun or
by `tic-grpo train` itself (launch.py: joining the process group, starting the ranks). Data parallelism is written out rather than hidden in
a DistributedDataParallel wrapper, because the trainer needs to control it:

- every rank draws the same global batch of prompts and keeps its share (whole groups, so
  group advantages need no communication);
- micro-batch losses are weighted by the global minibatch total divided by the world size,
  so *averaging* gradients over ranks gives exactly the single-process gradient, also for
  token-level aggregation where ranks hold different numbers of tokens;
- `average_gradients` runs once per optimizer step, after the last micro-batch and after
  grpo_no_is has copied its gradients from the frozen model (DDP would reduce the frozen
  model's gradients at the wrong time); under FSDP the shards are averaged during backward;
- loss, stats and rollout metrics are reduced so that every rank holds the global values
  (ranks must agree on skipping a non-finite update); only rank 0 writes the run dir.

`Dist` is the handle train.py holds. With `hardware.distributed=none` (or one process) every
method returns its input: the single-process path runs the code it always ran.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from tic_grpo_cli.errors import UserError

log = logging.getLogger("tic_grpo")

# Gradients are all-reduced in flat buckets of this many elements: few calls, bounded memory.
BUCKET_NUMEL = 1 << 25


def reduction(key: str) -> str:
    """How a metric combines over micro-batches and ranks, by its name: "max" for keys
    ending in `_max` or `/max`, "min" for `_min` or `/min`, else "mean" (weighted as the
    loss is). The one place this naming contract is written."""
    if key.endswith(("_max", "/max")):
        return "max"
    if key.endswith(("_min", "/min")):
        return "min"
    return "mean"


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks, and the collectives, as no-ops for one process."""

    mode: str = "none"  # none | ddp | fsdp
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # Where collective buffers live: the GPU for nccl, the CPU for gloo.
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    # ---------------------------------------------------------------- batch sharding

    def share(self, count: int, key: str) -> int:
        """This rank's part of `count` prompts; they must split evenly so every rank takes the
        same number of optimizer steps and the global minibatches stay whole."""
        if count % self.world_size:
            raise UserError(
                f"{key}={count} must be divisible by the number of processes ({self.world_size})"
            )
        return count // self.world_size

    # ---------------------------------------------------------------- collectives

    def average(self, value: float) -> float:
        if not self.active:
            return value
        return self._all_reduce([value], torch.distributed.ReduceOp.SUM)[0] / self.world_size

    def max(self, value: float) -> float:
        if not self.active:
            return value
        return self._all_reduce([value], torch.distributed.ReduceOp.MAX)[0]

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on one: ranks must stop at the same step."""
        return bool(self.max(float(flag)))

    def average_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Global values of per-rank stats, each by its key's `reduction` (max, min, or the
        average of means weighted as the loss is). Every rank must hold the same keys."""
        if not self.active:
            return stats
        keys = sorted(stats)  # the same order on every rank
        means = [k for k in keys if reduction(k) == "mean"]
        extremes = [k for k in keys if reduction(k) != "mean"]
        # min(x) = -max(-x): one MAX reduction serves both kinds of extreme.
        sign = {k: -1.0 if reduction(k) == "min" else 1.0 for k in extremes}
        totals = self._all_reduce([stats[k] for k in means], torch.distributed.ReduceOp.SUM)
        peaks = self._all_reduce(
            [sign[k] * stats[k] for k in extremes], torch.distributed.ReduceOp.MAX
        )
        out = {k: v / self.world_size for k, v in zip(means, totals, strict=True)}
        out |= {k: sign[k] * v for k, v in zip(extremes, peaks, strict=True)}
        return {k: out[k] for k in stats}

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """DDP: average every gradient over the ranks, in place. FSDP reduced its shards
        during backward already."""
        if self.mode != "ddp" or not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        for bucket in _buckets(grads, BUCKET_NUMEL):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                g.copy_(part.view_as(g))

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (any picklable value)."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self._object_device)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (CPU tensors only: pickles carry their device)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def _all_reduce(self, values: list[float], op) -> list[float]:
        if not values:
            return []
        buffer = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(buffer, op=op)
        return buffer.tolist()

    @property
    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None

    # ---------------------------------------------------------------- models

    def storage_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype to load weights in: FSDP keeps float32 master weights and computes in
        `dtype` (mixed precision); otherwise the weights are the compute dtype."""
        return torch.float32 if self.mode == "fsdp" else dtype

    def wrap(self, model, dtype: torch.dtype):
        """Prepare a model for this mode (None passes through). DDP: make every rank start
        from rank 0's weights. FSDP: shard each decoder layer, then the rest (the embeddings
        and the head, tied or not), computing in `dtype` and reducing gradients in float32."""
        if model is None or self.mode == "none":
            return model
        if self.mode == "ddp":
            if self.active:
                for tensor in [*model.parameters(), *model.buffers()]:
                    torch.distributed.broadcast(tensor.data, src=0)
            return model
        if self.device.type == "cpu" and not hasattr(torch.cpu.Stream, "record_event"):
            # FSDP's prefetching records events on the CPU's stream, which torch 2.6 lacks.
            raise UserError(
                f"hardware=fsdp on the CPU needs a newer torch than {torch.__version__} (its "
                "CPU streams cannot record events); use hardware=ddp there, or a GPU"
            )
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, mp_policy=policy)
        # The root's parameters (embeddings, head) are needed again at once by backward.
        fully_shard(model, mp_policy=policy, reshard_after_forward=False)
        return model

    @contextmanager
    def full_params(self, model) -> Iterator[None]:
        """Under FSDP, whole parameters on every rank for the duration: generation runs a
        different number of forwards on each rank (rows stop at EOS), and sharded forwards
        would have to all-gather in lockstep. A no-op otherwise."""
        if self.mode != "fsdp":
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.set_reshard_after_forward(unit is not model, recurse=False)
                unit.reshard()


# The handle of a single-process run: every collective is the identity.
SINGLE = Dist()


def _buckets(tensors: list[torch.Tensor], numel: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive same-dtype runs of about `numel` elements (torch.cat needs one dtype)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        if bucket and (size + t.numel() > numel or t.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket
