"""Read the records of an offline W&B run file (`run-<id>.wandb`) with W&B's own protobuf
schema, so tests check what W&B stored rather than grepping bytes.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB
blocks of chunks, each with a 7-byte header (checksum, little-endian length, type:
1 full, 2 first, 3 middle, 4 last); a block tail shorter than a header is zero padding.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32768
HEADER = 7


def records(path: Path) -> Iterator[object]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def history_keys(path: Path) -> set[str]:
    keys: set[str] = set()
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return keys


def wait_for_history_keys(path: Path, expected: set[str], timeout_s: float = 60.0) -> set[str]:
    """The history keys of `path` once they include `expected`, or what is there after
    `timeout_s`. W&B's service process writes the run file on its own schedule: `finish()`
    can return before the last records reach the disk (seen under load), so a reader that
    looks once may find none of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            keys = history_keys(path)
        except Exception:  # a record cut mid-write: read again
            if time.monotonic() > deadline:
                raise
            keys = set()
        if expected <= keys or time.monotonic() > deadline:
            return keys
        time.sleep(0.5)


def history_steps(path: Path, expected: int, timeout_s: float = 60.0) -> list[int]:
    """The `_step` of every history record of `path`, in file order, once there are
    `expected` of them (or what is there after `timeout_s`; see wait_for_history_keys)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            steps = [int(item.value_json) for record in records(path)
                     if record.WhichOneof("record_type") == "history"
                     for item in record.history.item
                     if (item.key or "/".join(item.nested_key)) == "_step"]  # fmt: skip
        except Exception:  # a record cut mid-write: read again
            if time.monotonic() > deadline:
                raise
            steps = []
        if len(steps) >= expected or time.monotonic() > deadline:
            return steps
        time.sleep(0.5)
