"""Report of the staleness study: the arms of conf/stale_arm as the rollouts trained grow
stale (`trainer.staleness` = d rollouts between sampling and training).

    tic-grpo analyze staleness-study [--dir docs/results/staleness_study] [--thresholds 4=0.7,8=0.25]

Reads ``<dir>/lr_grid`` (experiment=staleness_lr_grid: each arm at each rate, d = 4, scored
on the validation split) and ``<dir>/runs`` (experiment=staleness_study: every arm x d x
seed at the arm's chosen rate, scored on the test split, and experiment=staleness_long's
8-step chains beside them); ``--dir`` may also be a sweep dir of one's own. Each finished job has .hydra/overrides.yaml, summary.json and study.json
(`analysis.studies.record`). Writes ``<dir>/report.md``, ``<dir>/cells.csv`` and two plots,
and prints the report. Whatever has finished is reported.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

from tic_grpo_cli.analysis.studies.common import (
    area_under_curve,
    final,
    fmt_ci,
    lr_table,
    lr_text,
    main_variant,
    paired_table,
    parse_thresholds,
    reach,
    study_records,
)
from tic_grpo_cli.runs.files import atomic_write_text

DEFAULT_DIR = Path("docs/results/staleness_study")
BASE = "naive_grpo"
# Test accuracy whose first crossing times a run, per chain length: 4-step chains start near
# 43% and pass 70% within the 128 steps at d = 0; 8-step chains start near 15% (as in the
# chain study).
THRESHOLDS = {4: 0.7, 8: 0.25}
# (key in the record's diag_by_k, header, inner step: 1 = the rollout's first step, where
# the policy is exactly the proximal one, "K" = its last)
DIAGS = (
    ("staleness", "versions old", 1),
    ("mismatch/kl", "KL(μ‖prox)", 1),
    ("behaviour/kl", "KL(μ‖θ) @K", "K"),
    ("behaviour/capped_fraction", "ρ_μ > 1+ε @K", "K"),
    ("behaviour/ess", "ESS(ρ_μ)/n @K", "K"),
    ("clip_fraction", "own clip @K", "K"),
)
# The overrides that place a job in the study's design; any other makes a variant.
_DESIGN = {"seed", "stale_arm", "algorithm", "experiment", "trainer.staleness", "trainer.lr",
           "dataset"}  # fmt: skip


def load_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Finished jobs with a study record: arm, lr, staleness d, K, seed, the record, and the
    variant (overrides outside the design)."""
    out = []
    for job, record, overrides, variant in study_records(sweep_dir, _DESIGN):
        facts = record.get("job") or {}
        if "stale_arm" not in overrides:
            continue
        out.append({
            "arm": overrides["stale_arm"],
            "variant": variant,
            "lr": lr_text(facts["lr"]),
            "d": int(facts.get("staleness", 0)),
            "length": facts.get("chain_length"),
            "k": facts["K"],
            "seed": int(job.seed),
            "record": record,
        })  # fmt: skip
    return out


def _diag(job: dict[str, Any], key: str, step: int | str) -> float | None:
    k = job["k"] if step == "K" else step
    return job["record"]["diag_by_k"].get(str(k), {}).get(key)


def cell_rows(jobs: list[dict[str, Any]], thresholds: dict[int, float]) -> list[dict[str, Any]]:
    """One row per (chain length, d, arm, lr, variant): final accuracy, area under the curve,
    steps to the length's threshold, and the off-policy diagnostics, each as mean [95%
    interval] over seeds."""
    cells: dict[tuple[int, int, str, str, str], list[dict[str, Any]]] = {}
    for job in jobs:
        key = (job["length"], job["d"], job["arm"], job["lr"], job["variant"])
        cells.setdefault(key, []).append(job)
    rows = []
    for (length, d, arm, lr, variant), group in sorted(cells.items()):
        threshold = thresholds.get(length, 0.5)
        reached = [r for j in group if (r := reach(j["record"], threshold)) is not None]
        row: dict[str, Any] = {
            "chain_length": length, "staleness": d, "arm": arm, "lr": lr, "variant": variant,
            "seeds": len(group), "threshold": threshold,
            "final_acc": fmt_ci([final(j["record"]) for j in group]),
            "auc": fmt_ci([area_under_curve(j["record"]) for j in group]),
            "reached": f"{len(reached)}/{len(group)}",
            "steps_to_threshold": fmt_ci([float(s) for s, _ in reached], "{:.0f}"),
        }  # fmt: skip
        for key, _, step in DIAGS:
            values = [v for j in group if (v := _diag(j, key, step)) is not None]
            row[f"{key}@{step}"] = fmt_ci(values, "{:.3f}")
        rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]]) -> list[str]:
    heads = ["T (steps)", "d", "arm (lr)", "seeds", "final test acc", "mean acc over the run (AUC)",
             "steps to threshold", *(h for _, h, _ in DIAGS)]  # fmt: skip
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        name = f"{r['arm']} ({r['lr']}{', ' + r['variant'] if r['variant'] else ''})"
        cells = [str(r["chain_length"]), str(r["staleness"]), name, str(r["seeds"]),
                 r["final_acc"], r["auc"],
                 f"{r['steps_to_threshold']} ({r['reached']} reached {r['threshold']:g})",
                 *(r[f"{key}@{step}"] for key, _, step in DIAGS)]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return out


def paired(jobs: list[dict[str, Any]], measure, base: str = BASE) -> list[str]:
    """Each arm minus `base` in `measure` (points), paired by seed, one row per (chain
    length, d)."""
    values = {((j["length"], j["d"]), j["arm"], j["seed"]): measure(j["record"]) for j in jobs}
    arms = sorted({a for _, a, _ in values} - {base})
    return paired_table(values, base, arms, "T (steps) | d", lambda c: f"{c[0]} | {c[1]}")


def inner_step_rows(jobs: list[dict[str, Any]], key: str) -> list[str]:
    """`key` at each inner step k = 1..K, one row per (d, arm), mean over seeds."""
    k_max = max(j["k"] for j in jobs)
    groups: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    for job in jobs:
        if job["d"]:  # synchronous runs log no behaviour/* (it equals ratio_diag/* there)
            groups.setdefault((job["length"], job["d"], job["arm"]), []).append(job)
    lines = ["| T (steps) | d | arm | " + " | ".join(f"k={k}" for k in range(1, k_max + 1)) + " |",
             "|" + "---|" * (3 + k_max)]  # fmt: skip
    for (length, d, arm), group in sorted(groups.items()):
        cells = []
        for k in range(1, k_max + 1):
            values = [v for j in group if (v := _diag(j, key, k)) is not None]
            cells.append(f"{sum(values) / len(values):.3f}" if values else "-")
        lines.append(f"| {length} | {d} | {arm} | " + " | ".join(cells) + " |")
    return lines


def report(
    root: Path, thresholds: dict[int, float] | None = None, img_dir: Path | None = None
) -> str:
    """Write report.md and cells.csv under `root` (plots in `img_dir`, default `root`);
    return the report. `root` holds lr_grid/ and runs/, or is a sweep dir of jobs."""
    img_dir = img_dir or root
    thresholds = {**THRESHOLDS, **(thresholds or {})}
    layout = (root / "runs").is_dir() or (root / "lr_grid").is_dir()
    grid = load_jobs(root / "lr_grid")
    all_runs = main_variant(load_jobs(root / "runs" if layout else root))
    runs = [j for j in all_runs if not j["variant"]]
    lines = [f"# Staleness study report ({len(grid)} grid jobs, {len(runs)} study jobs finished)",
             ""]  # fmt: skip
    if grid:
        table, chosen = lr_table(grid)
        lines += ["## Learning rate (d = 4, validation split, mean of the last two evaluations)",
                  "", *table, "", "Chosen: " + ", ".join(f"{a} {lr}" for a, lr in chosen.items()),
                  ""]  # fmt: skip
    rows = cell_rows(all_runs, thresholds)
    if rows:
        lines += [
            "## Cells (test split; mean [95% t interval] over seeds)", "",
            "Final test accuracy: the mean of the last two evaluations. AUC: the mean of all",
            "evaluations, step 0 included (how fast as well as how far). Steps count to the",
            "first evaluation at or above the threshold (seeds that reached it). Diagnostics",
            "are run means at inner step 1 (the policy is the proximal one) or K (the last).",
            "", *_markdown(rows), "",
        ]  # fmt: skip
    if runs:
        lines += ["## Final test accuracy against naive GRPO, paired by seed (points)", "",
                  *paired(runs, final), "",
                  "## Mean accuracy over the run (AUC) against naive GRPO, paired by seed (points)",
                  "", *paired(runs, area_under_curve), "",
                  "## Against decoupled GRPO, paired by seed (points): final, then AUC", "",
                  *paired(runs, final, "decoupled_grpo"), "",
                  *paired(runs, area_under_curve, "decoupled_grpo"), ""]  # fmt: skip
        for key, head in (("behaviour/capped_fraction", "share of completions with ρ_μ > 1+ε"),
                          ("behaviour/kl", "KL(μ‖π_θ) per completion")):  # fmt: skip
            lines += [f"## {head} by inner step (mean over seeds)", "",
                      *inner_step_rows(runs, key), ""]  # fmt: skip
    if rows:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(root / "cells.csv", buf.getvalue())
    if runs:
        from tic_grpo_cli.analysis.studies import staleness_plots as plots  # matplotlib: on demand

        img_dir.mkdir(parents=True, exist_ok=True)
        plots.plot_against_staleness(runs, img_dir / "staleness_study.png")
        plots.plot_curves(runs, img_dir / "staleness_study_curves.png")
    text = "\n".join(lines)
    atomic_write_text(root / "report.md", text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tic-grpo analyze staleness-study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="the study's results dir")
    p.add_argument("--thresholds", type=parse_thresholds, default={},
                   help="test accuracy to reach per chain length, e.g. 4=0.7,8=0.25 (the default)")  # fmt: skip
    p.add_argument("--img-dir", type=Path, default=None, help="where the plots go (default --dir)")
    args = p.parse_args(argv)
    if not args.dir.is_dir():
        print(f"error: no results dir {args.dir}; run the study's sweeps first "
              "(docs/RESULTS.md, 'The staleness study')", file=sys.stderr)  # fmt: skip
        return 2
    print(report(args.dir, args.thresholds, args.img_dir))
    return 0
