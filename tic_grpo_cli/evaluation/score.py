"""`tic-grpo score input=FILE.jsonl [scorer=...] [output=FILE.jsonl] [reward.KEY=...]`.

Scores completions without a model, to check a reward on one's own data before a long run.
Each input row holds `completion` and `answer` (plus any field a scorer or reward function
reads: `data_source`, `numbers`, ...), or, as in an eval run's predictions.jsonl, a list
`completions`. Output rows are the input rows plus `correct`, `extracted`, `normalized`,
`reward`, `timed_out` and each reward term unweighted as `reward/<name>` (lists for a
`completions` row). A summary table follows.

The command is a Hydra app like train and eval (cli.score_app, conf/score.yaml: `--help`,
`--cfg job`, the typo check); this module holds its schema and the work.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

from tic_grpo_cli.config.choices import Scorer
from tic_grpo_cli.config.schema import RewardConfig
from tic_grpo_cli.config.validation import validate_reward
from tic_grpo_cli.data.rewards import Rewarder, RewardResult
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runs.files import atomic_write_jsonl

BATCH = 256  # rows per call of a user reward function


@dataclass
class ScoreConfig:
    """`tic-grpo score`'s config (conf/score.yaml); registered by cli as score_schema."""

    input: str = MISSING
    output: str | None = None
    # The reward's scorer: reward.scorer is set from it.
    scorer: Scorer = Scorer.auto
    reward: RewardConfig = field(default_factory=RewardConfig)


def validate(cfg: Any) -> None:
    """Semantic checks on a composed score config; raises ConfigError naming `reward.KEY`."""
    validate_reward(cfg.reward, prefix="reward")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSONL rows, each checked for an answer and a completion (or completions)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"input={path}: cannot read it ({err.__class__.__name__}: {err})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path} line {number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path} line {number}: a row must be a JSON object")
        missing = [k for k in ("answer",) if k not in row]
        if "completion" not in row and not isinstance(row.get("completions"), list):
            missing.insert(0, "completion")
        if missing:
            raise UserError(
                f"{path} line {number}: no {' or '.join(map(repr, missing))} field; each row "
                "needs completion and answer (an eval predictions.jsonl has completions)"
            )
        rows.append(row)
    if not rows:
        raise UserError(f"input={path}: no rows; write one JSON object per line")
    return rows


def _flatten(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]], list[int]]:
    """One (completion, example) per completion; `owner[i]` is the row it came from."""
    completions, examples, owner = [], [], []
    for r, row in enumerate(rows):
        texts = row["completions"] if "completion" not in row else [row["completion"]]
        example = {k: v for k, v in row.items() if k not in ("completion", "completions")}
        example["answer"] = "" if row["answer"] is None else str(row["answer"])
        for text in texts:
            completions.append(str(text))
            examples.append(example)
            owner.append(r)
    return completions, examples, owner


def _concat(parts: list[RewardResult]) -> RewardResult:
    lists = {
        f.name: [x for part in parts for x in getattr(part, f.name)]
        for f in fields(RewardResult)
        if f.name != "terms"
    }
    terms = {name: [x for part in parts for x in part.terms[name]] for name in parts[0].terms}
    return RewardResult(**lists, terms=terms)


def score_rows(rewarder: Rewarder, rows: list[dict[str, Any]]) -> tuple[list, RewardResult]:
    """Score every completion of `rows`; returns the output rows and the flat result."""
    completions, examples, owner = _flatten(rows)
    result = _concat([
        rewarder(completions[i : i + BATCH], examples[i : i + BATCH])
        for i in range(0, len(completions), BATCH)
    ])  # fmt: skip
    columns = {
        "correct": result.correct,
        "extracted": result.extracted,
        "normalized": result.normalized,
        "reward": result.rewards,
        "timed_out": result.timed_out,
        # Each term unweighted, as training logs it (reward/correct, reward/format, one per
        # reward.fns), so a row shows why its reward is what it is; timed_out is above.
        **{f"reward/{name}": v for name, v in result.terms.items() if name != "timed_out"},
    }
    # An eval predictions.jsonl's own `rewards` would contradict the new `reward`.
    out = [{k: v for k, v in row.items() if k != "rewards"} for row in rows]
    for name in columns:
        for row in out:
            row[name] = []
    for i, r in enumerate(owner):
        for name, values in columns.items():
            out[r][name].append(values[i])
    for row, original in zip(out, rows, strict=True):
        if "completion" in original:  # one completion: plain values, not lists of one
            row.update({name: row[name][0] for name in columns})
    return out, result


def summary(result: RewardResult, rows: int) -> dict[str, float]:
    n = len(result.correct)
    metrics = {
        "rows": float(rows),
        "completions": float(n),
        "accuracy": sum(result.correct) / n,
        "unparseable_fraction": sum(a is None for a in result.extracted) / n,
        "timed_out_fraction": sum(result.timed_out) / n,
        "reward/mean": sum(result.rewards) / n,
    }
    for name, values in result.terms.items():
        if name != "timed_out":
            metrics[f"reward/{name}"] = sum(values) / n
    return metrics


def print_summary(metrics: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, str(int(value)) if key in ("rows", "completions") else f"{value:.3f}")
    Console(width=None if sys.stdout.isatty() else 100).print(table)


def run(cfg: Any) -> dict[str, float]:
    """Score `cfg.input`, write `cfg.output` if given, print and return the summary. Raises
    UserError for a missing input, an existing output or a bad row, before writing."""
    if OmegaConf.is_missing(cfg, "input"):
        raise UserError("input: required; e.g. tic-grpo score input=completions.jsonl")
    source = Path(cfg.input)
    target = None if cfg.output is None else Path(cfg.output)
    if target is not None and target.exists():
        raise UserError(f"output={target}: exists; choose a new file name (nothing is overwritten)")
    rows = read_rows(source)
    reward = OmegaConf.merge(cfg.reward, {"scorer": cfg.scorer})
    rewarder = Rewarder(reward, "auto", prefix="reward")
    _check_countdown_fields(rows, source, cfg.scorer)
    out, result = score_rows(rewarder, rows)
    if target is not None:
        atomic_write_jsonl(target, out)
    metrics = summary(result, len(rows))
    print_summary(metrics, f"{source.name}: scorer={cfg.scorer}")
    if target is not None:
        print(f"scored rows: {target}")
    return metrics


def _check_countdown_fields(rows: list[dict[str, Any]], path: Path, scorer: str) -> None:
    from tic_grpo_cli.data.rewards import auto_scorer

    for number, row in enumerate(rows, 1):
        name = auto_scorer(row) if scorer == "auto" else scorer
        if name == "countdown" and row.get("numbers", row.get("nums")) is None:
            raise UserError(
                f"{path} line {number}: the countdown scorer needs a `numbers` field "
                "(the numbers the expression may use)"
            )
