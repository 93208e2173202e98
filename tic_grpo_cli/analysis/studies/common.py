"""What the studies' reports share: a run's final accuracy, its area under the curve and
its first crossing of a threshold, intervals over seeds, differences paired by seed, and the
learning-rate grid's choice. `chain.py` and `staleness.py` build their tables from these."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tic_grpo_cli.analysis.studies import record as study
from tic_grpo_cli.sweep.stats import describe
from tic_grpo_cli.sweep.summary import find_jobs


def study_records(
    sweep_dir: Path, design: set[str]
) -> Iterator[tuple[Any, dict[str, Any], dict[str, str], str]]:
    """The finished jobs of a study's sweep dir that wrote a study record (record.RECORD):
    (job, record, overrides with Hydra's leading '+' dropped, variant). The variant names the
    overrides outside `design` ("k=v k=v", sorted; "" for the study's own jobs), so a cut-down
    or supplementary run is reported apart from the study. Nothing if the dir is absent."""
    if not sweep_dir.is_dir():
        return
    for job in find_jobs(sweep_dir):
        path = job.dir / study.RECORD
        if job.status != "finished" or not path.is_file():
            continue
        overrides = {k.lstrip("+"): v for k, v in job.overrides.items()}
        variant = {k: v for k, v in overrides.items() if k not in design}
        variant_text = " ".join(f"{k}={v}" for k, v in sorted(variant.items()))
        yield job, json.loads(path.read_text(encoding="utf-8")), overrides, variant_text


def lr_text(lr: float) -> str:
    """A learning rate as people write it: 5e-05 -> '5e-5', 0.0001 -> '1e-4', 0.001 -> '1e-3'."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def final(record: dict[str, Any], last: int = 2) -> float:
    """Mean accuracy of the last `last` evaluations: one evaluation alone swings by points."""
    accs = [acc for _, acc, _ in record["eval"][-last:]]
    return sum(accs) / len(accs)


def reach(record: dict[str, Any], threshold: float) -> tuple[int, float] | None:
    """(step, train seconds) of the first evaluation at or above the threshold."""
    for step, acc, seconds in record["eval"]:
        if acc >= threshold:
            return step, seconds
    return None


def fmt_ci(values: list[float], fmt: str = "{:.3f}") -> str:
    """Mean [95% t interval] over seeds as text; the mean alone for one value, "-" for none."""
    d = describe(values)
    if d["mean"] is None:
        return "-"
    if d["std"] is None:
        return fmt.format(d["mean"])
    lo, hi = fmt.format(d["ci95_low"]), fmt.format(d["ci95_high"])
    return f"{fmt.format(d['mean'])} [{lo}, {hi}]"


def area_under_curve(record: dict[str, Any]) -> float:
    """Mean accuracy over a run's evaluations, the step-0 one included (they are equally
    spaced): how fast it learned as well as where it ended, in one number."""
    accs = [acc for _, acc, _ in record["eval"]]
    return sum(accs) / len(accs)


def lr_table(jobs: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """Markdown rows of the grid (validation accuracy, mean over seeds and lengths) and the
    chosen rate per arm (the highest mean; ties go to the smaller rate)."""
    by_arm: dict[str, dict[str, list[float]]] = {}
    for job in jobs:
        by_arm.setdefault(job["arm"], {}).setdefault(job["lr"], []).append(final(job["record"]))
    lines = [
        "| arm | lr: validation accuracy (runs) | chosen |",
        "|---|---|---|",
    ]
    chosen = {}
    for arm, by_lr in sorted(by_arm.items()):
        means = {lr: sum(v) / len(v) for lr, v in by_lr.items()}
        chosen[arm] = max(sorted(means, key=float), key=lambda lr: means[lr])
        cells = ", ".join(
            f"{lr}: {means[lr]:.3f} ({len(by_lr[lr])})" for lr in sorted(means, key=float)
        )
        lines.append(f"| {arm} | {cells} | {chosen[arm]} |")
    return lines, chosen


def paired_table(
    values: dict[tuple[Any, str, int], float], base: str, arms: list[str], cell_head: str,
    cell_text=str, scale: float = 100.0,
) -> list[str]:  # fmt: skip
    """Markdown rows of each arm minus `base`, paired by seed: `values` maps (cell, arm,
    seed) to a figure; one row per cell, `cell_head` the header of its column, `cell_text`
    its text. A cell shows the mean difference x `scale` and its 95% t interval over the
    seeds both arms finished, "-" where fewer than two pair.

    A seed fixes the model's start, the order of training prompts and which test problems
    are scored, so the difference within a seed removes the share of the spread that all
    arms have in common."""
    cells = sorted({c for c, a, _ in values if a in arms})
    lines = [
        f"| {cell_head} | " + " | ".join(f"{a} − {base}" for a in arms) + " |",
        "|" + "---|" * (cell_head.count("|") + 1 + len(arms)),
    ]
    for cell in cells:
        out = []
        for arm in arms:
            diffs = [scale * (v - values[(cell, base, seed)]) for (c, a, seed), v in values.items()
                     if (c, a) == (cell, arm) and (cell, base, seed) in values]  # fmt: skip
            d = describe(diffs)
            if d["std"] is None:
                out.append("-")
            else:
                lo, hi = d["ci95_low"], d["ci95_high"]
                out.append(f"{d['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}] (n={len(diffs)})")
        lines.append(f"| {cell_text(cell)} | " + " | ".join(out) + " |")
    return lines


def main_variant(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs with the variant most of them share get variant "": they are the study (a
    cut-down study is all one variant); the others keep theirs and are reported apart."""
    if not jobs:
        return jobs
    main = Counter(j["variant"] for j in jobs).most_common(1)[0][0]

    def differs(variant: str) -> str:  # what sets a job apart: its overrides the main lacks
        if variant == main:
            return ""
        extra = [item for item in variant.split() if item not in main.split()]
        return " ".join(extra) or f"not {main}"

    return [{**j, "variant": differs(j["variant"])} for j in jobs]


def parse_thresholds(text: str) -> dict[int, float]:
    """`--thresholds 4=0.7,8=0.25`: accuracy to reach, per chain length (argparse type)."""
    try:
        pairs = [item.split("=") for item in text.split(",") if item]
        return {int(length): float(value) for length, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected chain_length=accuracy pairs, e.g. 4=0.7,8=0.25"
        ) from None
