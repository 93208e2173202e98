"""The chain study's per-job record: a small `study.json` a git repository can hold.

A training job's `metrics.jsonl` has one ~1.3 kB row per optimizer step (hundreds of kB per
job); the study commits instead, per job, `study.json` with what its report needs:

- ``eval``: every evaluation as ``[step, accuracy, train_seconds]``, where train_seconds is
  the sum of the rollout and update times up to that step (evaluation time left out, so the
  wall time to a threshold does not depend on how often the run evaluates);
- ``reward``: the mean training reward of every rollout, ``[step, reward]``;
- ``diag_by_k``: the trajectory-ratio diagnostics (`tic_grpo_cli.algorithms.diagnostics`) and the
  algorithm's own clip fraction at each inner step k = 1..K of a rollout, averaged over the
  rollouts of the run;
- ``job``: the algorithm, learning rate, K, T and chain length, read from the job's config.

`RecordJob` is a Hydra callback that writes it when a job ends (experiment=chain_study and
chain_lr_grid register it); `record(run_dir)` does the same by hand.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tic_grpo_cli.runs.files import atomic_write_text, read_jsonl

log = logging.getLogger("tic_grpo")
RECORD = "study.json"
DIAG_KEYS = (
    "ratio_diag/log_rho_std",
    "ratio_diag/capped_fraction",
    "ratio_diag/ess",
    "ratio_diag/kl_old",
    "clip_fraction",
    # Against the behaviour policy mu and the proximal policy (trainer.staleness > 0).
    "behaviour/log_rho_mean",
    "behaviour/log_rho_std",
    "behaviour/capped_fraction",
    "behaviour/ess",
    "behaviour/kl",
    "mismatch/kl",
    "mismatch/seq_kl",
    "staleness",
)


def compact(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The study record of one run from its metrics rows (as `metrics.jsonl` holds them)."""
    evals, rewards, by_k = [], [], {}
    seconds, last_rollout = 0.0, None
    for row in rows:
        if "eval/accuracy" in row:
            evals.append([int(row["step"]), row["eval/accuracy"], round(seconds, 2)])
            continue
        if "rollout" not in row:
            continue
        if row["rollout"] != last_rollout:  # the first step of a rollout carries its times
            last_rollout = row["rollout"]
            seconds += row.get("time/rollout_s", 0.0) + row.get("time/update_s", 0.0)
            rewards.append([int(row["step"]), round(row["reward/mean"], 4)])
        k = int(row.get("minibatch", 0)) + 1
        for key in DIAG_KEYS:
            if key in row:
                by_k.setdefault(k, {}).setdefault(key, []).append(row[key])
    # A resumed run evaluates its checkpoint's step again: keep the last row of each step.
    evals = list({step: [step, acc, t] for step, acc, t in evals}.values())
    diag = {
        str(k): {key: statistics.fmean(vals) for key, vals in keys.items()}
        for k, keys in sorted(by_k.items())
    }
    return {"eval": evals, "reward": rewards, "diag_by_k": diag, "train_seconds": seconds}


def job_facts(config: dict[str, Any]) -> dict[str, Any]:
    """What the report groups by, from a job's composed config (.hydra/config.yaml)."""
    tr, data, alg = config["trainer"], config["dataset"], config["algorithm"]
    return {
        "algorithm": alg["name"],
        "epsilon_low": alg.get("epsilon_low"),
        "lr": tr["lr"],
        "K": tr["rollout_batch_size"] // tr["minibatch_size"],
        "T": tr["max_completion_length"],
        "chain_length": data.get("chain_length"),
        "eval_split": data.get("test_split"),
        "max_steps": tr["max_steps"],
        "staleness": tr.get("staleness", 0),
        "old_logprobs": tr.get("old_logprobs"),
        "rollout_correction": alg.get("rollout_correction"),
        "length_corrected_advantage": alg.get("length_corrected_advantage"),
    }


def record(run_dir: Path) -> Path | None:
    """Write run_dir/study.json from its metrics.jsonl and .hydra/config.yaml; None when the
    job has not finished or left no metrics."""
    run_dir = Path(run_dir)
    metrics, config = run_dir / "metrics.jsonl", run_dir / ".hydra" / "config.yaml"
    if not (run_dir / "summary.json").is_file() or not metrics.is_file():
        return None
    data = compact(read_jsonl(metrics))
    if config.is_file():
        data["job"] = job_facts(OmegaConf.to_container(OmegaConf.load(config), resolve=True))
    out = run_dir / RECORD
    atomic_write_text(out, json.dumps(data) + "\n")
    return out


class RecordJob(Callback):
    """Hydra callback: write study.json into each finished job's dir when the job ends."""

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        try:
            record(Path(config.hydra.runtime.output_dir))
        except Exception as err:  # the job's own results are on disk either way
            log.error("could not write %s: %s: %s", RECORD, type(err).__name__, err)
