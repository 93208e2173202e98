"""Sweep job dirs on disk: the markers a job leaves, reading them back, grouping into configurations.

Each job dir holds `.hydra/overrides.yaml` and, when it ended, `summary.json` (finished) or
`error.json` (failed); a dir with neither was killed or is still running ("incomplete").
Jobs are grouped into configurations by their overrides minus the seed.
"""

from __future__ import annotations

import json
import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tic_grpo_cli.runs.files import atomic_write_text, read_jsonl

# Overrides that do not change what is trained, so jobs differing only in them are seeds
# of one configuration (the seed itself, bookkeeping, logging, thread counts).
NOT_CONFIG_KEYS = ("seed", "resume", "aggregate", "sweep.", "wandb.", "hardware.num_threads")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _status(run_dir: Path) -> str:
    summary, error = run_dir / "summary.json", run_dir / "error.json"
    # A job re-run after a failure (or failing after an earlier success) leaves both files;
    # the newer one tells how its last attempt ended.
    if summary.exists() and (
        not error.exists() or summary.stat().st_mtime_ns >= error.stat().st_mtime_ns
    ):
        return "finished" if _read_json(summary) is not None else "incomplete"
    return "failed" if error.exists() else "incomplete"


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The job's summary.json if its last attempt finished, else None (run it)."""
    if _status(Path(run_dir)) != "finished":
        return None
    return _read_json(Path(run_dir) / "summary.json")


def record_failure(run_dir: Path, err: BaseException) -> None:
    """Write error.json for a failed job so the summary can list it with its error."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "error": str(err),
        "type": type(err).__name__,
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    }
    atomic_write_text(run_dir / "error.json", json.dumps(record, indent=2) + "\n")


@dataclass
class Job:
    dir: Path
    overrides: dict[str, str]
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seed(self) -> str:
        return self.overrides.get("seed", "0")


def _parse_overrides(lines: list[str]) -> dict[str, str]:
    parsed = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def finite_number(value: Any) -> float | None:
    """A finite float, or None: the trainer writes NaN for a metric it could not measure."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job dir below sweep_dir (any depth: Hydra's subdir may contain slashes)."""
    jobs = []
    for overrides_file in sorted(sweep_dir.rglob(".hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        # A .hydra right in the sweep dir belongs to a single run written there, not a job.
        if job_dir == sweep_dir:
            continue
        lines = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) or []
        job = Job(job_dir, _parse_overrides(lines), _status(job_dir))
        if job.status == "finished":
            job.summary = _read_json(job_dir / "summary.json") or {}
            job.rows = [r for r in read_jsonl(job_dir / "metrics.jsonl") if "step" in r]
        elif job.status == "failed":
            err = _read_json(job_dir / "error.json") or {}
            job.error = f"{err.get('type', 'Error')}: {err.get('error', '')}".strip()
        jobs.append(job)
    return jobs


def steps_to_threshold(rows: list[dict[str, Any]], threshold: float) -> int | None:
    """First step whose eval accuracy reaches the threshold, None if none does."""
    for row in rows:
        acc = finite_number(row.get("eval/accuracy"))
        if acc is not None and acc >= threshold:
            return int(row["step"])
    return None


def _is_config_key(key: str) -> bool:
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_CONFIG_KEYS)


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def group_jobs(jobs: list[Job]) -> tuple[dict[str, list[Job]], list[str]]:
    """Configurations keyed by label (the swept keys except seed) and the common overrides."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides if _is_config_key(k)))
    swept = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    # An override some job's config replaced (the chain study pins algorithm=tic and each
    # +arm sets its own) would misname the jobs: the summary says what ran.
    ran = {str(j.summary["algorithm"]) for j in jobs if "algorithm" in j.summary}
    replaced = {"algorithm"} if ran - {jobs[0].overrides.get("algorithm")} else set()
    common = [f"{k}={jobs[0].overrides[k]}" for k in keys if k not in swept and k not in replaced]
    # With one configuration there is nothing to tell apart: name it by its overrides.
    label_keys = swept or keys
    groups: dict[str, list[Job]] = {}
    for job in sorted(
        jobs,
        key=lambda j: [_sort_key(j.overrides.get(k, "")) for k in label_keys] + [_sort_key(j.seed)],
    ):
        label = ",".join(f"{k}={job.overrides[k]}" for k in label_keys if k in job.overrides)
        groups.setdefault(label or "defaults", []).append(job)
    return groups, common if swept else []
