"""`tic-grpo eval`: score a checkpoint, every checkpoint of a run, or a model on a data set.

`evaluate(cfg, run_dir)` is the command: resolve what to evaluate (`eval_targets`), load each
model through `models.load_model_and_tokenizer`, score it in process (`eval_model`, which the
trainer also calls), show the results (`eval_report`) and write the eval run dir:

    results.json        metrics per checkpoint/model, the config, the data set and its size
    predictions.jsonl   one row per example (and checkpoint): completions, answers, rewards
    metrics.jsonl       one row per checkpoint, the same rows W&B receives
    accuracy_vs_step.png  with checkpoint.all=true
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tic_grpo_cli.config.validation import validate_eval
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.evaluation.model_eval import evaluate_model, length_limit_warning, split_examples
from tic_grpo_cli.evaluation.report import (
    format_metrics,
    plot_accuracy_vs_step,
    print_table,
    title_of,
)
from tic_grpo_cli.evaluation.run_config import is_base_of_run
from tic_grpo_cli.evaluation.targets import Target, checkpoint_model_config, resolve_targets
from tic_grpo_cli.runs.files import (
    atomic_write_json,
    atomic_write_jsonl,
    read_jsonl,
)
from tic_grpo_cli.runs.logger import RunLogger

log = logging.getLogger("tic_grpo")

RUN_EVAL_FILE = "eval_metrics.jsonl"


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate what `cfg.checkpoint` names on `cfg.dataset`; write and return the results."""
    validate_eval(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    targets = resolve_targets(cfg.checkpoint, cfg.model.name_or_path)
    if cfg.eval.log_to_run and targets[0].train_dir is None:
        raise UserError("eval.log_to_run=true needs checkpoint=<a training run or its checkpoint>")
    _warn_dataset_mismatch(cfg, targets[0].train_dir)
    if cfg.checkpoint.all and cfg.checkpoint.base:
        targets = _with_base(cfg, targets)

    from tic_grpo_cli.models import resolve_device, resolve_dtype
    from tic_grpo_cli.runtime.threads import CpuThreads

    # A checkpoint's own tokenizer (the base model's, saved with it), not the base's loader.
    task = _build_task(cfg, next((t for t in targets if t.checkpoint), targets[0]))
    CpuThreads(cfg.hardware.num_threads).start()
    device = resolve_device(cfg.hardware)
    dtype = resolve_dtype(cfg.model, cfg.hardware, device)
    config = OmegaConf.to_container(cfg, resolve=True)
    logger = RunLogger(run_dir, cfg.wandb, config, None)
    results: dict[str, Any] = {}
    entries: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    warned = False
    try:
        for target in targets:
            entry, preds, split_size = _evaluate_target(cfg, target, task, device, dtype)
            entries.append(entry)
            limit = cfg.eval.max_new_tokens
            warning = length_limit_warning(entry["metrics"], limit, "eval.max_new_tokens")
            if warning and not warned:  # once: every checkpoint of a run shares the limit
                log.warning(warning)
                warned = True
            predictions += [
                {"checkpoint": entry["checkpoint"], "step": target.step, **p} for p in preds
            ]
            # Rewritten after every checkpoint: an interrupted `all` run keeps what it did.
            results = _results(cfg, config, entries, split_size)
            _write_outputs(run_dir, results, predictions)
            row = {"step": target.step, **{f"eval/{k}": v for k, v in entry["metrics"].items()}}
            logger.log(row)
            if cfg.eval.log_to_run:
                record_in_run(target.train_dir, row, _setting(cfg), entry["checkpoint"], run_dir)
    finally:
        logger.finish({f"eval/{k}": v for k, v in results.get("metrics", {}).items()})
    title = title_of(cfg, results["dataset"])
    caption = f"run: {targets[0].train_dir}" if targets[0].train_dir else None
    if cfg.checkpoint.all:
        named = f"{_run_name(targets[0].train_dir)}\n{title}".lstrip()
        plot_accuracy_vs_step(entries, run_dir / "accuracy_vs_step.png", named)
    print_table(entries, title, caption)
    log.info("results written to %s", run_dir / "results.json")
    return results


def _with_base(cfg: DictConfig, targets: list[Target]) -> list[Target]:
    """The run's base model first, as step 0, so the accuracy curve starts where training
    did; only when the model config is the run's own (else the "base" would be another
    model), which `tic-grpo eval checkpoint=<run>` arranges (run_config.py)."""
    train_dir = targets[0].train_dir
    if not is_base_of_run(cfg, train_dir):
        log.info(
            "checkpoint.base: %s's saved config does not name model %s; the curve starts "
            "at the first checkpoint",
            train_dir,
            cfg.model.name_or_path,
        )
        return targets
    return [Target(label="base", step=0, train_dir=train_dir), *targets]


def _run_name(train_dir: Path | None) -> str:
    """`tic · tiny · arithmetic · seed 0` of the training run, from its saved config."""
    saved = None if train_dir is None else train_dir / ".hydra" / "config.yaml"
    if saved is None or not saved.is_file():
        return ""
    from tic_grpo_cli.runs.curves import run_title

    try:
        return run_title(OmegaConf.load(saved))
    except Exception:  # an older run's config without one of the keys: no name, no failure
        return ""


def _build_task(cfg: DictConfig, target: Target) -> Any:
    """The data set, built and checked with the tokenizer alone, so a data error (a missing
    field, an unknown split) comes before any model loads. The targets are one model or the
    checkpoints of one run: they share the tokenizer, and so the prompts."""
    from tic_grpo_cli.data import build_task
    from tic_grpo_cli.data.lengths import check_prompts, completion_limit
    from tic_grpo_cli.models import load_tokenizer

    tokenizer = load_tokenizer(checkpoint_model_config(cfg.model, target.checkpoint))
    # Only the evaluated split's prompts are checked: a train split may be large.
    task = build_task(cfg.dataset, tokenizer, check_splits=())
    split_examples(task, cfg.eval.split)
    limit = completion_limit("eval.max_new_tokens", cfg.eval.max_new_tokens, cfg.dataset)
    check_prompts(task, cfg.dataset, tokenizer, (cfg.eval.split,), limit)
    return task


def _evaluate_target(
    cfg: DictConfig, target: Target, task: Any, device: Any, dtype: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    from tic_grpo_cli.models import load_model_and_tokenizer

    model_cfg = checkpoint_model_config(cfg.model, target.checkpoint)
    log.info("evaluating %s", target.checkpoint or target.label)
    try:
        model, tokenizer = load_model_and_tokenizer(model_cfg, device=device, dtype=dtype)
    except UserError:
        raise
    except Exception as err:
        # A checkpoint that passed the file checks but does not load is damaged or from an
        # incompatible version: bad input, not a crash. HYDRA_FULL_ERROR=1 shows the chain.
        if target.checkpoint is None:
            raise
        detail = (str(err).strip().splitlines() or [""])[0]
        raise UserError(
            f"cannot load checkpoint {target.checkpoint} ({type(err).__name__}: {detail}); "
            "is it complete and written by this version?"
        ) from err
    ev = cfg.eval
    split_size = len(split_examples(task, ev.split))
    metrics, predictions = evaluate_model(
        model,
        tokenizer,
        task,
        split=ev.split,
        limit=ev.limit,
        num_samples=ev.num_samples,
        temperature=ev.temperature,
        top_p=ev.top_p,
        top_k=ev.top_k,
        max_new_tokens=ev.max_new_tokens,
        batch_size=ev.batch_size,
        seed=cfg.seed,
        progress=sys.stdout.isatty(),
        skip_special_tokens=cfg.dataset.reward.skip_special_tokens,
    )
    log.info("%s: %s", target.checkpoint or target.label, format_metrics(metrics))
    entry = {
        "label": target.label,
        "checkpoint": None if target.checkpoint is None else str(target.checkpoint),
        "step": target.step,
        "model": model_cfg.name_or_path,
        "metrics": metrics,
    }
    return entry, predictions, split_size


def _dataset_name(data: DictConfig) -> str:
    return data.path if data.kind == "hf" else data.kind


def _results(
    cfg: DictConfig, config: dict[str, Any], entries: list[dict[str, Any]], split_size: int
) -> dict[str, Any]:
    return {
        # The last entry is the latest checkpoint (or the only model): what a script wants.
        "metrics": entries[-1]["metrics"],
        "results": entries,
        "checkpoint": {"path": cfg.checkpoint.path, "all": cfg.checkpoint.all},
        "dataset": {
            "name": _dataset_name(cfg.dataset),
            "kind": cfg.dataset.kind,
            "split": cfg.eval.split,
            "size": split_size,
            "num_evaluated": entries[-1]["metrics"]["num_examples"],
            "limit": cfg.eval.limit,
        },
        "config": config,
    }


def _write_outputs(run_dir: Path, results: dict[str, Any], predictions: list[dict]) -> None:
    atomic_write_json(run_dir / "results.json", results)
    atomic_write_jsonl(run_dir / "predictions.jsonl", predictions)


def _setting(cfg: DictConfig) -> dict[str, Any]:
    """What makes two evaluations of one checkpoint comparable."""
    ev = cfg.eval
    return {
        "dataset": _dataset_name(cfg.dataset),
        "split": ev.split,
        "limit": ev.limit,
        "num_samples": ev.num_samples,
        "temperature": ev.temperature,
        "top_p": ev.top_p,
        "top_k": ev.top_k,
        "max_new_tokens": ev.max_new_tokens,
        "seed": cfg.seed,
    }


def record_in_run(
    train_dir: Path, row: dict[str, Any], setting: dict[str, Any], checkpoint: str, eval_dir: Path
) -> Path:
    """Add `row` to `<train_dir>/eval_metrics.jsonl`, replacing an earlier row of the same
    step and setting, so re-running an eval updates instead of duplicating.

    Not metrics.jsonl: the trainer may still be appending to it, and two writers on one
    file interleave or lose lines. This file is only ever replaced whole (tmp + rename).
    """
    path = train_dir / RUN_EVAL_FILE
    new = {**row, "setting": setting, "checkpoint": checkpoint, "eval_dir": str(eval_dir)}
    rows = [
        r
        for r in read_jsonl(path)
        if not (r.get("step") == row["step"] and r.get("setting") == setting)
    ]
    rows.append(new)
    rows.sort(key=lambda r: -1 if r.get("step") is None else r["step"])
    atomic_write_jsonl(path, rows)
    return path


def _warn_dataset_mismatch(cfg: DictConfig, train_dir: Path | None) -> None:
    """Eval uses `dataset=` as given; say so when the training run used another one."""
    saved = None if train_dir is None else train_dir / ".hydra" / "config.yaml"
    if saved is None or not saved.is_file():
        return
    trained = OmegaConf.to_container(OmegaConf.load(saved), resolve=False).get("dataset") or {}
    current = OmegaConf.to_container(cfg.dataset, resolve=True)
    differ = sorted(
        k for k in current if k != "train_size" and trained.get(k, current[k]) != current[k]
    )
    if differ:
        log.warning(
            "the run was trained on a different dataset config (%s differ); evaluating "
            "on dataset=%s as configured",
            ", ".join(differ),
            _dataset_name(cfg.dataset),
        )
