"""`tic-grpo score input=FILE.jsonl [scorer=...] [output=FILE.jsonl] [reward.KEY=...]`.

Scores completions without a model, to check a reward on one's own data before a long run.
Each input row holds `completion` and `answer` (plus any field a scorer or reward function
reads: `data_source`, `numbers`, ...), or, as in an eval run's predictions.jsonl, a list
`completions`. Output rows are the input rows plus `correct`, `extracted`, `normalized`,
`reward`, `timed_out` and each reward term unweighted as `reward/<name>` (lists for a
`completions` row). A summary table follows.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tic_grpo_cli.config.schema import RewardConfig
from tic_grpo_cli.config.validation import validate_reward
from tic_grpo_cli.data.rewards import SCORER_NAMES, Rewarder, RewardResult
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runs.files import atomic_write_jsonl

USAGE = """usage: tic-grpo score input=FILE.jsonl [scorer=auto|gsm8k|math|number|exact|countdown]
                      [output=FILE.jsonl] [reward.fn=mod:fn] [reward.fns=[mod:fn,...]]
                      [reward.weights=[w,...]] [reward.format_pattern=REGEX]
                      [reward.format_weight=W] [reward.correct_threshold=T]
                      [reward.verify_timeout=SECONDS]

Scores each row's `completion` (or an eval predictions.jsonl's `completions`) against its
`answer` and prints accuracy, unparseable and timed-out fractions and the reward terms.
scorer=auto picks per row: a verl data_source, else "####" in the answer means gsm8k,
else math. The extraction rules: docs/rewards.md."""
BATCH = 256  # rows per call of a user reward function


@dataclass
class ScoreConfig:
    input: str = MISSING
    output: str | None = None
    scorer: str = "auto"
    reward: RewardConfig = field(default_factory=RewardConfig)


def parse_args(args: list[str]) -> Any:
    """`key=value` arguments (OmegaConf dotlist, as Hydra overrides) -> a checked config."""
    bad = [a for a in args if "=" not in a]
    if bad:
        raise UserError(f"{bad[0]!r}: arguments are key=value, e.g. input=data.jsonl")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ScoreConfig), OmegaConf.from_dotlist(args))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "argument"
        reason = str(getattr(err, "msg", err)).splitlines()[0]
        raise UserError(f"{key}: {reason} (keys: input, output, scorer, reward.*)") from None
    if OmegaConf.is_missing(cfg, "input"):
        raise UserError("input: required; e.g. tic-grpo score input=completions.jsonl")
    if cfg.scorer not in ("auto", *SCORER_NAMES):
        raise UserError(f"scorer: got {cfg.scorer!r}; allowed: auto, {', '.join(SCORER_NAMES)}")
    cfg.reward.scorer = cfg.scorer
    validate_reward(cfg.reward, prefix="reward")
    return cfg


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
    """Score `cfg.input`, write `cfg.output` if given, print and return the summary."""
    source = Path(cfg.input)
    target = None if cfg.output is None else Path(cfg.output)
    if target is not None and target.exists():
        raise UserError(f"output={target}: exists; choose a new file name (nothing is overwritten)")
    rows = read_rows(source)
    rewarder = Rewarder(cfg.reward, "auto", prefix="reward")
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


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or {"-h", "--help", "help"} & set(args):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        run(parse_args(args))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
