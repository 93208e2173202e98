"""Hugging Face `datasets`: a hub name and a local file or directory take one code path.

`load_dataset` reads a hub name (`openai/gsm8k`, config `main`), a local .json/.jsonl/
.parquet/.arrow/.csv file, or a directory of such files; a `save_to_disk` directory goes
through `load_from_disk`. Either way a split stays an Arrow-backed `Dataset`: one
streaming pass over its prompt and answer columns finds bad rows (and, when no test split
is given, picks the held-out rows), and rows become Python dicts only when indexed.

verl files (prompt as chat messages, reward_model.ground_truth, data_source, extra_info)
are recognised by their columns, whatever prompt_field and answer_field say.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from tic_grpo_cli.data.prompts import PromptRenderer, prompt_text
from tic_grpo_cli.data.rewards import Rewarder
from tic_grpo_cli.data.task import Example, Examples, Task
from tic_grpo_cli.errors import UserError

log = logging.getLogger("tic_grpo")

LOCAL_FORMATS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
}
# "null": a column with no value at all; its rows are reported one by one as bad rows.
_TEXT_TYPES = ("string", "large_string", "null")


@dataclass(frozen=True)
class Schema:
    prompt: str  # the column holding the prompt: text or chat messages
    answer: tuple[str, ...]  # the path to the answer: ("answer",), ("reward_model", "ground_truth")
    verl: bool = False


def describe(cfg: Any) -> str:
    return f"{cfg.path} (config {cfg.config_name})" if cfg.config_name else str(cfg.path)


def _is_local(path: str) -> bool:
    return (
        os.path.exists(os.path.expanduser(path))
        or path.startswith(("/", ".", "~"))
        or Path(path).suffix.lower() in LOCAL_FORMATS
    )


def load_splits(cfg: Any, where: str) -> Any:
    """name -> Dataset for every split of the configured data set."""
    import datasets

    path = str(cfg.path)
    data_files = cfg.data_files
    if isinstance(data_files, (DictConfig, ListConfig)):
        data_files = OmegaConf.to_container(data_files)
    builder = path
    if _is_local(path):
        # A local file loads in moments: its "Generating train split" bars are noise. Hub
        # downloads keep theirs.
        datasets.disable_progress_bars()
        local = Path(path).expanduser()
        if not local.exists():
            raise UserError(
                f"dataset.path: {path} does not exist; give an existing file or directory, "
                "or a hub name like openai/gsm8k"
            )
        if local.is_dir() and any(
            (local / f).exists() for f in ("state.json", "dataset_dict.json")
        ):
            loaded = datasets.load_from_disk(str(local))
            return {"train": loaded} if isinstance(loaded, datasets.Dataset) else loaded
        if local.is_file():
            builder = LOCAL_FORMATS.get(local.suffix.lower(), "")
            if not builder:
                raise UserError(
                    f"dataset.path: {path} is not a data file this loader reads; use "
                    f"{', '.join(LOCAL_FORMATS)}"
                )
            data_files = {"train": str(local)}
    try:
        return datasets.load_dataset(
            builder, name=cfg.config_name, data_files=data_files, cache_dir=cfg.cache_dir
        )
    except Exception as err:
        if builder in LOCAL_FORMATS.values() and _is_empty_file(Path(path).expanduser()):
            raise UserError(f"dataset.path: {path} is empty; it has no rows") from err
        first = (str(err).strip().splitlines() or [""])[0]
        hint = (
            "check the file's format"
            if builder in LOCAL_FORMATS.values() or _is_local(path)
            else "check the name and network access, or point dataset.path at a local copy"
        )
        raise UserError(
            f"dataset.path: cannot load {where} ({type(err).__name__}: {first}); {hint}"
        ) from err


def _is_empty_file(path: Path) -> bool:
    """Whether a data file holds no rows: `load_dataset` fails on those with messages like
    'Instruction "train" corresponds to no data!' or a bare StopIteration."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows == 0
        if path.stat().st_size > 4096:
            return False
        text = path.read_text(errors="replace").strip()
        return text in ("", "[]") or (path.suffix.lower() == ".csv" and "\n" not in text)
    except Exception:
        return False


def _feature_at(features: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(features, dict) or key not in features:
            return None
        features = features[key]
    return features


def _dig(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _is_text(feature: Any) -> bool:
    return getattr(feature, "dtype", None) in _TEXT_TYPES and not isinstance(feature, dict)


def _is_scalar(feature: Any) -> bool:
    dtype = getattr(feature, "dtype", None)
    return isinstance(dtype, str) and (
        dtype in _TEXT_TYPES or dtype.startswith(("int", "uint", "float"))
    )


def _is_chat(feature: Any) -> bool:
    inner = (
        feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", None)
    )
    return isinstance(inner, dict) and {"role", "content"} <= set(inner)


def _is_countdown_truth(feature: Any) -> bool:
    """verl's countdown ground truth: {target, numbers}."""
    return (
        isinstance(feature, dict)
        and "target" in feature
        and ("numbers" in feature or "nums" in feature)
    )


def detect_schema(features: Any, cfg: Any, where: str, split: str) -> Schema:
    columns = ", ".join(features)
    truth = _feature_at(features, ("reward_model", "ground_truth"))
    if "prompt" in features and _is_chat(features["prompt"]) and truth is not None:
        schema = Schema("prompt", ("reward_model", "ground_truth"), verl=True)
    else:
        schema = Schema(str(cfg.prompt_field), tuple(str(cfg.answer_field).split(".")))
        for key, found in (
            ("prompt_field", schema.prompt in features),
            ("answer_field", _feature_at(features, schema.answer) is not None),
        ):
            if not found:
                raise UserError(
                    f"dataset.{key}: no field {getattr(cfg, key)!r} in {where} split {split!r}; "
                    f"columns: {columns}"
                )
    prompt, answer = features[schema.prompt], _feature_at(features, schema.answer)
    if not (_is_text(prompt) or _is_chat(prompt)):
        raise UserError(
            f"dataset.prompt_field: {schema.prompt!r} of {where} holds {_short(prompt)}; "
            "expected text or a list of chat messages"
        )
    if not (_is_scalar(answer) or _is_countdown_truth(answer)):
        raise UserError(
            f"dataset.answer_field: {'.'.join(schema.answer)!r} of {where} holds "
            f"{_short(answer)}; expected text or a number"
        )
    return schema


def _short(feature: Any) -> str:
    text = repr(feature)
    return text if len(text) <= 80 else text[:77] + "..."


def _row_problem(prompt: Any, answer: Any) -> str | None:
    if prompt is None:
        return "the prompt is null"
    if isinstance(prompt, str):
        if not prompt.strip():
            return "the prompt is empty"
    elif not prompt or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt
    ):
        return "the prompt has no chat messages"
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return "the answer is missing"
    if isinstance(answer, dict) and answer.get("target") is None:
        return "the answer has no target"
    return None


def _scan(ds: Any, schema: Schema, seed: int | None):
    """Bad rows (indices, first reason) and, given a seed, a seeded hash of each prompt."""
    bad: list[int] = []
    first: tuple[int, str] | None = None
    keys = np.zeros(len(ds), dtype=np.uint64) if seed is not None else None
    columns = list(dict.fromkeys([schema.prompt, schema.answer[0]]))
    index = 0
    for batch in ds.select_columns(columns).iter(batch_size=4096):
        for prompt, root in zip(batch[schema.prompt], batch[schema.answer[0]], strict=True):
            problem = _row_problem(prompt, _dig(root, schema.answer[1:]))
            if problem is not None:
                bad.append(index)
                first = first or (index, problem)
            elif keys is not None:
                digest = hashlib.sha256(f"{seed}:{prompt_text(prompt)}".encode()).digest()
                keys[index] = int.from_bytes(digest[:8], "big")
            index += 1
    return bad, first, keys


def _prepare(ds: Any, schema: Schema, cfg: Any, where: str, split: str, seed: int | None):
    bad, first, keys = _scan(ds, schema, seed)
    if first is not None:
        if not cfg.skip_bad_rows:
            raise UserError(
                f"{where} split {split!r} row {first[0]}: {first[1]}; fix the row or set "
                "dataset.skip_bad_rows=true to skip such rows"
            )
        keep = np.setdiff1d(np.arange(len(ds)), bad)
        ds = ds.select(keep)
        keys = None if keys is None else keys[keep]
        log.warning(
            "%s split %r: skipped %d bad rows (first: row %d: %s)", where, split, len(bad), *first
        )
    if len(ds) == 0:
        skipped = f" after skipping {len(bad)} bad rows" if bad else ""
        raise UserError(f"{where} split {split!r} is empty{skipped}; check the file and split")
    return ds, keys, len(bad)


def _hold_out(ds: Any, keys: np.ndarray, test_size: int) -> tuple[Any | None, Any]:
    """(train, test): the test rows are the `test_size` distinct prompts of lowest seeded
    hash, and train keeps only prompts hashed above them, so a prompt repeated in the data
    (some hub sets repeat each one many times) never lands on both sides. With no more
    distinct prompts than `test_size`, every row is a test row and train is None: a small
    file of one's own can still be evaluated whole."""
    unique, first = np.unique(keys, return_index=True)
    if len(unique) <= test_size:
        return None, ds
    cutoff = unique[test_size - 1]
    return ds.select(np.flatnonzero(keys > cutoff)), ds.select(np.sort(first[:test_size]))


def _too_small_to_hold_out(where: str, prompts: int, test_size: int) -> str:
    """Why a file whose prompts all went to the test split cannot be trained on."""
    hint = f"set dataset.test_size below {prompts}, or " if prompts > 1 else ""
    return (
        f"dataset.test_size: holding out {test_size} prompts leaves none to train on: {where} "
        f"has {prompts} distinct prompts; {hint}give test rows of their own (a directory "
        "holding train.jsonl and test.jsonl, or dataset.test_split)"
    )


def _renderer(schema: Schema, renderer: PromptRenderer) -> Callable[[dict[str, Any]], Example]:
    def render(row: dict[str, Any]) -> Example:
        prompt = row[schema.prompt]
        answer = _dig(row[schema.answer[0]], schema.answer[1:])
        example = {k: v for k, v in row.items() if k != schema.prompt}
        if isinstance(answer, dict):  # verl countdown: the numbers and target are the truth
            example.update(answer)
            answer = answer["target"]
        example["question"] = prompt_text(prompt)
        example["answer"] = str(answer)
        example["prompt"] = renderer(prompt, example)
        return example

    return render


def build_hf_task(cfg: Any, tokenizer: Any) -> Task:
    where = describe(cfg)
    loaded = load_splits(cfg, where)
    available = sorted(set(loaded) | {"train", "test"})

    def prepare(split: str, key: str, seed: int | None = None):
        if split not in loaded:
            raise UserError(f"{key}: no split {split!r} in {where}; splits: {', '.join(loaded)}")
        schema = detect_schema(loaded[split].features, cfg, where, split)
        ds, keys, skipped = _prepare(loaded[split], schema, cfg, where, split, seed)
        return ds, schema, keys, skipped

    def examples(ds: Any, schema: Schema) -> Examples:
        fields = [*ds.column_names, "question"]
        return Examples(ds, _renderer(schema, PromptRenderer(cfg, tokenizer, fields, where)))

    splits: dict[str, Examples | None] = {"train": None}
    skipped: dict[str, int] = {}
    missing: dict[str, str] = {}
    test_split = cfg.test_split
    if test_split is None and "test" in loaded and cfg.train_split not in (None, "test"):
        # A directory holding train.* and test.* files: its test file is the test split.
        test_split = "test"
        log.info("%s: test split from its own test data (dataset.test_size unused)", where)
    if cfg.train_split is not None:
        hold_out = test_split is None
        ds, schema, keys, skipped["train"] = prepare(
            cfg.train_split, "dataset.train_split", cfg.seed if hold_out else None
        )
        if hold_out:
            ds, test = _hold_out(ds, keys, cfg.test_size)
            splits["test"] = examples(test, schema)
            if ds is None:
                prompts = len(np.unique(keys))
                missing["train"] = _too_small_to_hold_out(where, prompts, cfg.test_size)
                log.info(
                    "%s: its %d distinct prompts are no more than dataset.test_size=%d: "
                    "all %d rows are the test split, none is left to train on",
                    where,
                    prompts,
                    cfg.test_size,
                    len(test),
                )
        splits["train"] = None if ds is None else examples(ds, schema)
    if test_split is not None:
        ds, schema, _, skipped["test"] = prepare(test_split, "dataset.test_split")
        splits["test"] = examples(ds, schema)

    def load_split(name: str) -> Examples:
        ds, schema, _, task.skipped[name] = prepare(name, "split")
        return examples(ds, schema)

    task = Task(where, splits, Rewarder(cfg.reward, "auto"), load_split, available, missing)
    task.skipped.update(skipped)
    return task
