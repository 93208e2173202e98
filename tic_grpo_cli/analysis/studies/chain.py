"""Report of the chain study: TIC-GRPO against GRPO and its ablations on the long `chain` task.

    tic-grpo analyze chain-study [--dir docs/results/chain_study] [--thresholds 4=0.7,8=0.25]

Reads the job dirs the study's two sweeps leave (docs/RESULTS.md, "The chain study"):
``<dir>/lr_grid`` (experiment=chain_lr_grid: each arm at each learning rate, scored on the
validation split) and ``<dir>/runs`` (experiment=chain_study: every arm x K x chain length x
seed at the arm's chosen rate, scored on the test split), and ``<dir>/supplement`` if there
is one (an arm at another rate: the same sweep with ``trainer.lr=...`` and
``hydra.sweep.dir=<dir>/supplement``, reported in a table of its own). ``--dir`` may also be
a sweep dir of one's own (``hydra.sweep.dir=DIR``, jobs right below it). Each finished job has
.hydra/overrides.yaml, summary.json and study.json (`tic_grpo_cli.analysis.studies.record`). Writes
``<dir>/report.md``, ``<dir>/cells.csv`` and two plots, and prints the report. Whatever has
finished is reported; a cell with fewer seeds than planned says so.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

from tic_grpo_cli.analysis.studies.common import (
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

DEFAULT_DIR = Path("docs/results/chain_study")
# Under DEFAULT_DIR: the study's jobs, and jobs of an arm at a rate other than its chosen one
# (a check on the learning-rate choice, reported in a table of its own).
SUBDIRS = {"study": "runs", "supplement": "supplement"}
# Test accuracy whose first crossing times a run, per chain length: well above the start
# (43% and 14%) and below where the arms level off within the study's 64 steps.
THRESHOLDS = {4: 0.7, 8: 0.25}
DIAGS = (
    ("ratio_diag/log_rho_std", "std log ρ"),
    ("ratio_diag/capped_fraction", "ρ > 1+ε"),
    ("ratio_diag/ess", "ESS/n"),
    ("ratio_diag/kl_old", "KL(old‖θ)"),
    ("clip_fraction", "own clip frac."),
)


def arm_name(job: dict[str, Any]) -> str:
    """The study's name for a job's algorithm: traj_is without a lower clip is its own arm."""
    low = job.get("epsilon_low")
    nolow = job["algorithm"] == "traj_is" and low is not None and low >= 1
    return "traj_is_nolow" if nolow else job["algorithm"]


# The overrides that place a job in the study's design; any other (a cut-down
# trainer.max_steps=16, the supplement's trainer.lr=1e-4) makes a variant, kept apart.
_DESIGN = {"seed", "arm", "algorithm", "dataset", "experiment", "trainer.rollout_batch_size"}


def _load(sweep_dir: Path) -> list[dict[str, Any]]:
    """Finished jobs with a study record: arm, lr, K, chain length, seed, the record, and the
    job's variant: its overrides outside the study's design ("" for the study's own jobs)."""
    out = []
    for job, record, _, variant in study_records(sweep_dir, _DESIGN):
        facts = record.get("job")
        if not facts:
            continue
        out.append(
            {
                "arm": arm_name(facts),
                "variant": variant,
                "lr": lr_text(facts["lr"]),
                "k": facts["K"],
                "length": facts["chain_length"],
                "seed": int(job.seed),
                "summary": job.summary,
                "record": record,
            }
        )
    return out


def cell_rows(jobs: list[dict[str, Any]], thresholds: dict[int, float]) -> list[dict[str, Any]]:
    """One row per (chain length, K, arm, lr, variant): finals, threshold times and last-step
    diagnostics. An arm run at two rates (the supplement) gives two rows."""
    cells: dict[tuple[int, int, str, str, str], list[dict[str, Any]]] = {}
    for job in jobs:
        key = (job["length"], job["k"], job["arm"], job["lr"], job.get("variant", ""))
        cells.setdefault(key, []).append(job)
    rows = []
    for (length, k, arm, lr, variant), group in sorted(cells.items()):
        threshold = thresholds.get(length, 0.5)
        reached = [r for j in group if (r := reach(j["record"], threshold)) is not None]
        row: dict[str, Any] = {
            "chain_length": length,
            "K": k,
            "arm": arm,
            "lr": lr,
            "variant": variant,
            "seeds": len(group),
            "threshold": threshold,
            "final_acc": fmt_ci([final(j["record"]) for j in group]),
            "reached": f"{len(reached)}/{len(group)}",
            "steps_to_threshold": fmt_ci([float(s) for s, _ in reached], "{:.0f}"),
            "seconds_to_threshold": fmt_ci([t for _, t in reached], "{:.0f}"),
        }
        for key, _ in DIAGS:  # at the last inner step k = K, where the policy is furthest off
            values = [
                d[key] for j in group if (d := j["record"]["diag_by_k"].get(str(k))) and key in d
            ]
            row[key] = fmt_ci(values, "{:.3f}")
        rows.append(row)
    return rows


def paired_rows(
    jobs: list[dict[str, Any]], base: str = "grpo", arms: list[str] | None = None
) -> list[str]:
    """Markdown rows: each arm minus `base` in final test accuracy, paired by seed, per
    (chain length, K) (see `common.paired_table`)."""
    finals = {((j["length"], j["k"]), j["arm"], j["seed"]): final(j["record"]) for j in jobs}
    arms = arms or sorted({a for _, a, _ in finals} - {base})
    return paired_table(finals, base, arms, "T (steps) | K", lambda c: f"{c[0]} | {c[1]}")


def inner_loop_rows(jobs: list[dict[str, Any]], key: str, k_max: int) -> list[str]:
    """Markdown rows: diagnostic `key` at each inner step k = 1..k_max of the cells with
    K = k_max, one row per (chain length, arm), the mean over seeds of each run's average
    at that k: how far off-policy the policy gets as a rollout's minibatches go by."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for job in jobs:
        if job["k"] == k_max:
            groups.setdefault((job["length"], job["arm"]), []).append(job)
    lines = [
        "| T (steps) | arm | " + " | ".join(f"k={k}" for k in range(1, k_max + 1)) + " |",
        "|" + "---|" * (2 + k_max),
    ]
    for (length, arm), group in sorted(groups.items()):
        cells = []
        for k in range(1, k_max + 1):
            values = [
                d[key] for j in group if key in (d := j["record"]["diag_by_k"].get(str(k), {}))
            ]
            cells.append(f"{sum(values) / len(values):.3f}" if values else "-")
        lines.append(f"| {length} | {arm} | " + " | ".join(cells) + " |")
    return lines


def _markdown(rows: list[dict[str, Any]]) -> list[str]:
    heads = [
        "T (steps)",
        "K",
        "arm (lr)",
        "seeds",
        "final test acc",
        "steps to threshold",
        "train s to threshold",
        *(h + " @k=K" for _, h in DIAGS),
    ]
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [
            str(r["chain_length"]),
            str(r["K"]),
            f"{r['arm']} ({r['lr']}{', ' + r['variant'] if r['variant'] else ''})",
            str(r["seeds"]),
            r["final_acc"],
            f"{r['steps_to_threshold']} ({r['reached']} reached {r['threshold']:g})",
            r["seconds_to_threshold"],
            *(r[key] for key, _ in DIAGS),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _variant_note(n: int) -> list[str]:
    if not n:
        return []
    return [
        f"{n} jobs ran with overrides outside the study's design (named in their rows): they",
        "are kept out of the paired table, the inner-step tables and the plots.",
    ]


def report(
    root: Path, thresholds: dict[int, float] | None = None, img_dir: Path | None = None
) -> str:
    """Write report.md and cells.csv under root (plots in img_dir, default root); return it.
    root is the study's results dir (runs/, lr_grid/, supplement/ below it) or a sweep dir
    whose job dirs are right below it."""
    img_dir = img_dir or root
    thresholds = {**THRESHOLDS, **(thresholds or {})}
    # The study's root holds runs/ (and lr_grid/, supplement/); a sweep dir of one's own
    # (hydra.sweep.dir=DIR) holds the jobs themselves.
    layout = any((root / d).is_dir() for d in ("lr_grid", *SUBDIRS.values()))
    study_dir = root / SUBDIRS["study"] if layout else root
    grid, all_runs = _load(root / "lr_grid"), main_variant(_load(study_dir))
    runs = [j for j in all_runs if not j["variant"]]  # the design's jobs: pairs, plots
    supplement = main_variant(_load(root / SUBDIRS["supplement"]))
    lines = [f"# Chain study report ({len(grid)} grid jobs, {len(runs)} study jobs finished)", ""]
    if grid:
        table, chosen = lr_table(grid)
        lines += [
            "## Learning rate (validation split, mean of the last two evaluations)",
            "",
            *table,
            "",
        ]
        lines.append("Chosen: " + ", ".join(f"{a} {lr}" for a, lr in chosen.items()))
        lines.append("")
    rows = [{"set": "study", **r} for r in cell_rows(all_runs, thresholds)]
    extra = [{"set": "supplement", **r} for r in cell_rows(supplement, thresholds)]
    if rows:
        lines += [
            "## Cells (test split; mean [95% t interval] over seeds)",
            "",
            "Final test accuracy is the mean of the last two evaluations; steps and train",
            "seconds count to the first evaluation at or above the threshold.",
            *_variant_note(len(all_runs) - len(runs)),
            "",
            *_markdown(rows),
            "",
        ]
    if runs:
        lines += [
            "## Final test accuracy against GRPO, paired by seed (points)",
            "",
            *paired_rows(runs),
            "",
        ]
        k_max = max(j["k"] for j in runs)
        for key, head in DIAGS[:4]:
            lines += [f"## {head} by inner step, K = {k_max} (mean over seeds)", ""]
            lines += [*inner_loop_rows(runs, key, k_max), ""]
    if extra:
        lines += [
            f"## Supplement: arms at another learning rate ({len(supplement)} jobs, test split)",
            "",
            *_markdown(extra),
            "",
        ]
        # Paired by seed against the study's jobs of the same cell: GRPO, and the same arm at
        # its chosen rate.
        renamed = [{**j, "arm": f"{j['arm']} ({j['lr']})"} for j in supplement]
        names = sorted({j["arm"] for j in renamed})
        for base in ("grpo", *sorted({j["arm"] for j in supplement} - {"grpo"})):
            lines += [
                f"Final test accuracy against `{base}` at its study rate, paired by seed:",
                "",
            ]
            lines += [*paired_rows(runs + renamed, base, names), ""]
    if rows or extra:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list((rows or extra)[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows + extra)
        (root / "cells.csv").write_text(buf.getvalue(), encoding="utf-8")
    if runs:
        from tic_grpo_cli.analysis.studies import chain_plots as plots  # matplotlib: on demand

        img_dir.mkdir(parents=True, exist_ok=True)
        plots.plot_curves(runs, img_dir / "chain_study_curves.png")
        design_rows = [r for r in rows if not r["variant"]]
        plots.plot_steps(design_rows, runs, thresholds, img_dir / "chain_study_steps.png")
    text = "\n".join(lines)
    (root / "report.md").write_text(text + "\n", encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tic-grpo analyze chain-study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="the study's results dir")
    p.add_argument(
        "--thresholds",
        type=parse_thresholds,
        default={},
        help="test accuracy to reach per chain length, e.g. 4=0.7,8=0.25 (the default)",
    )
    p.add_argument("--img-dir", type=Path, default=None, help="where the plots go (default --dir)")
    args = p.parse_args(argv)
    if not args.dir.is_dir():
        print(
            f"error: no results dir {args.dir}; run the study's sweeps first (docs/RESULTS.md)",
            file=sys.stderr,
        )
        return 2
    print(report(args.dir, args.thresholds, args.img_dir))
    return 0
