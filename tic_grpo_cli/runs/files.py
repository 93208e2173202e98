"""Files a run reads and writes: written whole or not at all, read back tolerating a kill.

Every file the tool writes (summaries, results, reports, plots, rewritten logs) goes through
`atomic_write`: a temporary file in the same directory, renamed over the target once
complete, so a reader, a crash or a full disk never leaves half a file. Append-only logs
(`metrics.jsonl`, `samples.jsonl`) are read with `read_jsonl`, which skips a line a kill cut
short.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process's file-creation mask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary path beside `path` (same suffix), then rename it over
    `path`. On any error the temporary file is removed and `path` is left as it was. The
    file gets the mode a plain `open()` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`text` (UTF-8) into `path`, atomically (see `atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON (non-JSON values by `str`), atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line (non-ASCII kept as is), atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of an append-only log, one per line; [] if the file is missing.

    A line that does not parse (a kill can cut the last one short) or is not an object is
    skipped, so everything written whole is read. For a user's own input, which must not be
    read past an error, see `data` and `evaluation.score`, which name the bad line instead.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
