"""`tic-grpo eval`: score a checkpoint, every checkpoint of a run, or a model on a data set.

`evaluate_model` is the in-process part the trainer also calls: sample completions with the
training sampler (`rollout.generate`), score them with the task, and summarise them
(`metrics.summarize`). `evaluate(cfg, run_dir)` is the command around it: resolve what to
evaluate, load each model through `models.load_model_and_tokenizer` (a checkpoint is just a
model config whose `name_or_path` is the checkpoint dir), and write the eval run dir:

    results.json        metrics per checkpoint/model, the config, the data set and its size
    predictions.jsonl   one row per example (and checkpoint): completions, answers, rewards
    metrics.jsonl       one row per checkpoint, the same rows W&B receives
    accuracy_vs_step.png  with checkpoint.all=true
"""

from __future__ import annotations

import copy
import json
import logging
import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, read_write

from tic_grpo_cli import observe
from tic_grpo_cli.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    is_checkpoint,
    list_checkpoints,
    resolve_checkpoint,
)
from tic_grpo_cli.config import validate_eval
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.metrics import summarize

log = logging.getLogger("tic_grpo")

# Any of these next to config.json means `save_pretrained` wrote a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
RUN_EVAL_FILE = "eval_metrics.jsonl"
# Short table headers, so a table of 8 samples fits an 80-column terminal.
HEADERS = {
    "accuracy": "acc",
    "reward/mean": "reward",
    "completion_length/mean": "len",
    "unparseable_fraction": "unparsed",
    "num_examples": "n",
}
_STEP = re.compile(r"^step_(\d+)$")


# --------------------------------------------------------------------------- in-process API


def split_examples(task: Any, split: str) -> Sequence[dict[str, Any]]:
    """The examples of one split; an unknown split name is a UserError."""
    try:
        return task.split(split)
    except (KeyError, ValueError) as err:
        raise UserError(f"eval.split={split!r}: {err}") from err


def select_examples(
    examples: Sequence[dict[str, Any]], limit: int | None, seed: int
) -> list[tuple[int, dict[str, Any]]]:
    """(index, example) pairs to evaluate, in split order.

    With a limit, the examples are the first `limit` indices of a permutation seeded by
    `seed` alone (not by the split's content or the sampling): the same seed picks the same
    subset of a split, every checkpoint of a run is scored on the same examples, and a larger
    limit only adds examples (limit=50 is inside limit=100).
    """
    indices = list(range(len(examples)))
    if limit is not None and limit < len(indices):
        random.Random(f"eval-subset:{seed}").shuffle(indices)
        indices = sorted(indices[:limit])
    return [(i, examples[i]) for i in indices]


def evaluate_model(
    model: Any,
    tokenizer: Any,
    task: Any,
    *,
    split: str = "test",
    limit: int | None = None,
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 8,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Sample `num_samples` completions per example of `split`, score and summarise them.

    Returns (metrics, predictions): see `metrics.summarize` for the metrics, and one
    prediction per example {index, prompt, answer, completions, extracted, rewards, correct,
    lengths}. `temperature=0` is greedy. Sampling draws from one CPU generator seeded with
    `seed`, so a result is reproducible for a given seed, batch_size and device.
    """
    import torch

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chosen = select_examples(split_examples(task, split), limit, seed)
    if not chosen:
        raise UserError(f"the {split!r} split is empty: nothing to evaluate")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    # About batch_size completions per generate call, so a progress bar moves and the
    # padded prompt batch stays small; generate splits a larger group by batch_size itself.
    per_call = max(1, batch_size // num_samples)
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, generator=generator)
    predictions: list[dict[str, Any]] = []
    with _progress(progress, len(chosen)) as advance:
        for start in range(0, len(chosen), per_call):
            chunk = chosen[start : start + per_call]
            predictions += _sample_and_score(
                model, tokenizer, task, chunk, num_samples, max_new_tokens, batch_size, sampling
            )
            advance(len(chunk))
    return summarize(predictions, num_samples), predictions


def _sample_and_score(
    model: Any,
    tokenizer: Any,
    task: Any,
    chunk: list[tuple[int, dict[str, Any]]],
    n: int,
    max_new_tokens: int,
    batch_size: int,
    sampling: dict[str, Any],
) -> list[dict[str, Any]]:
    from tic_grpo_cli.rollout import generate

    # Each prompt repeated n times in a row, as the trainer builds a group.
    examples = [example for _, example in chunk for _ in range(n)]
    gen = generate(
        model,
        tokenizer,
        [e["prompt"] for e in examples],
        max_new_tokens,
        batch_size=batch_size,
        **sampling,
    )
    scored = task.score(gen.texts, examples)
    lengths = gen.completion_mask.sum(-1).tolist()
    out = []
    for row, (index, example) in enumerate(chunk):
        rows = slice(row * n, (row + 1) * n)
        out.append(
            {
                "index": index,
                "prompt": example["prompt"],
                "answer": example.get("answer"),
                "completions": gen.texts[rows],
                "extracted": [None if a is None else str(a) for a in scored.extracted[rows]],
                "rewards": [float(r) for r in scored.rewards[rows]],
                "correct": [bool(c) for c in scored.correct[rows]],
                "lengths": [int(x) for x in lengths[rows]],
            }
        )
    return out


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over examples, or nothing; yields `advance(n)`."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("evaluating", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task_id = bar.add_task("eval", total=total)
        yield lambda n: bar.advance(task_id, n)


# --------------------------------------------------------------------------- what to evaluate


@dataclass
class Target:
    """One model to evaluate: a checkpoint (with its step and training run) or a model config."""

    label: str
    checkpoint: Path | None = None
    step: int | None = None
    train_dir: Path | None = None  # the training run dir holding the checkpoint, if any


def resolve_targets(selection: DictConfig, model_name: str) -> list[Target]:
    """The checkpoints (or the configured model) `checkpoint.path` / `checkpoint.all` name.

    Checks paths and tokenizer files before anything heavy is imported or loaded, so bad
    input fails in a second.
    """
    if selection.path is None:
        return [Target(label=model_name)]
    path = Path(selection.path).expanduser()
    if not path.exists():
        raise UserError(
            f"checkpoint={path}: no such file or directory; expected a checkpoint dir "
            "(<run>/checkpoints/step_N) or a training run dir"
        )
    if selection.all:
        found = [ckpt for _, ckpt in list_checkpoints(path)]
        if not found:
            hint = (
                f" (it is a single checkpoint: drop checkpoint.all or give {path.parent.parent})"
                if is_checkpoint(path)
                else ""
            )
            raise UserError(
                f"checkpoint.all=true expects a training run dir with checkpoints/step_N; "
                f"found none in {path}{hint}"
            )
    else:
        found = [resolve_checkpoint(path)]
    targets = [_checkpoint_target(ckpt) for ckpt in found]
    for target in targets:
        _require_tokenizer(target.checkpoint)
    return targets


def _checkpoint_target(ckpt: Path) -> Target:
    match = _STEP.match(ckpt.name)
    train_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    return Target(
        label=ckpt.name if train_dir else str(ckpt),
        checkpoint=ckpt,
        step=int(match.group(1)) if match else None,
        train_dir=train_dir,
    )


def _require_tokenizer(ckpt: Path) -> None:
    if not any((ckpt / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"checkpoint {ckpt} has no tokenizer (expected {' or '.join(TOKENIZER_FILES[:2])} "
            "next to config.json); save it with tokenizer.save_pretrained"
        )


def checkpoint_model_config(model_cfg: DictConfig, checkpoint: Path | None) -> DictConfig:
    """A copy of the model config that loads `checkpoint` through the usual loader."""
    cfg = copy.deepcopy(model_cfg)
    with read_write(cfg):
        if checkpoint is not None:
            cfg.name_or_path = str(checkpoint)
            # The checkpoint is a full HF directory: no GGUF, no hub revision.
            cfg.gguf_file = cfg.gguf_package = cfg.revision = None
        # Adapters are for training; fresh LoRA weights would change nothing but the speed.
        cfg.lora.enabled = False
    return cfg


# --------------------------------------------------------------------------- the command


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate what `cfg.checkpoint` names on `cfg.dataset`; write and return the results."""
    validate_eval(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    targets = resolve_targets(cfg.checkpoint, cfg.model.name_or_path)
    if cfg.eval.log_to_run and targets[0].train_dir is None:
        raise UserError("eval.log_to_run=true needs checkpoint=<a training run or its checkpoint>")
    _warn_dataset_mismatch(cfg, targets[0].train_dir)

    from tic_grpo_cli.models import resolve_device, resolve_dtype
    from tic_grpo_cli.threads import CpuThreads

    CpuThreads(cfg.hardware.num_threads).start()
    device = resolve_device(cfg.hardware)
    dtype = resolve_dtype(cfg.model, cfg.hardware, device)
    config = OmegaConf.to_container(cfg, resolve=True)
    logger = observe.RunLogger(run_dir, cfg.wandb, config, None)
    results: dict[str, Any] = {}
    entries: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    try:
        for target in targets:
            entry, preds, split_size = _evaluate_target(cfg, target, device, dtype)
            entries.append(entry)
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
    title = _title(cfg, results["dataset"])
    caption = f"run: {targets[0].train_dir}" if targets[0].train_dir else None
    if cfg.checkpoint.all:
        plot_accuracy_vs_step(entries, run_dir / "accuracy_vs_step.png", title)
    print_table(entries, title, caption)
    log.info("results written to %s", run_dir / "results.json")
    return results


def _evaluate_target(
    cfg: DictConfig, target: Target, device: Any, dtype: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    from tic_grpo_cli.data import build_task
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
    task = build_task(cfg.dataset, tokenizer)
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
    )
    log.info("%s: %s", target.checkpoint or target.label, _format_metrics(metrics))
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
    lines = "".join(json.dumps(p) + "\n" for p in predictions)
    atomic_write_text(run_dir / "predictions.jsonl", lines)


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
        for r in observe.read_jsonl(path)
        if not (r.get("step") == row["step"] and r.get("setting") == setting)
    ]
    rows.append(new)
    rows.sort(key=lambda r: -1 if r.get("step") is None else r["step"])
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
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


# --------------------------------------------------------------------------- reporting


def _format_value(key: str, value: Any) -> str:
    if key == "num_examples":
        return str(int(value))
    if key == "completion_length/mean":
        return f"{value:.1f}"
    return f"{value:.3f}"


def _format_metrics(metrics: dict[str, float]) -> str:
    return " | ".join(f"{k} {_format_value(k, v)}" for k, v in metrics.items())


def _title(cfg: DictConfig, dataset: dict[str, Any]) -> str:
    ev = cfg.eval
    decoding = "greedy" if ev.temperature == 0 else f"T={ev.temperature}, {ev.num_samples} samples"
    return (
        f"{dataset['name']} / {dataset['split']}: {dataset['num_evaluated']} of "
        f"{dataset['size']} examples, {decoding}"
    )


def print_table(entries: list[dict[str, Any]], title: str, caption: str | None = None) -> None:
    """One row per checkpoint or model; plain text when stdout is not a terminal."""
    from rich.console import Console
    from rich.table import Table

    # pass@1 is c/n, the same number as accuracy: one column is enough.
    keys = [key for key in entries[0]["metrics"] if key != "pass@1"]
    table = Table(title=title, caption=caption)
    table.add_column("checkpoint" if entries[0]["checkpoint"] else "model", overflow="fold")
    for key in keys:
        table.add_column(HEADERS.get(key, key), justify="right")
    for entry in entries:
        table.add_row(entry["label"], *(_format_value(k, entry["metrics"][k]) for k in keys))
    # Off a terminal rich assumes 80 columns and would squeeze the numbers.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def plot_accuracy_vs_step(entries: list[dict[str, Any]], out_path: Path, title: str = "") -> None:
    """Accuracy (Avg@k), and pass@k and maj@k when sampled, against training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((e for e in entries if e["step"] is not None), key=lambda e: e["step"])
    steps = [e["step"] for e in points]
    n = max((int(k[5:]) for k in entries[0]["metrics"] if k.startswith("pass@")), default=1)
    curves = {"accuracy": "accuracy" if n == 1 else f"accuracy (Avg@{n})"}
    if n > 1:
        curves |= {f"pass@{n}": f"pass@{n}", f"maj@{n}": f"maj@{n}"}
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for key, label in curves.items():
        ax.plot(steps, [e["metrics"][key] for e in points], marker="o", label=label)
    ax.legend()
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_path)
