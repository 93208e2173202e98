"""Evaluate one loaded model in process: the part `tic-grpo eval` and the trainer share.

`evaluate_model` samples completions with the training sampler (`rollout.generate`), scores
them with the task and summarises them (`metrics.summarize`). `select_examples` picks the
seeded subset of a split that every checkpoint of a run is scored on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tic_grpo_cli.errors import UserError
from tic_grpo_cli.evaluation.metrics import summarize

# Above this share of completions cut at the length limit, evaluation says so.
CUT_WARNING_FRACTION = 0.5


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
    skip_special_tokens: bool = True,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Sample `num_samples` completions per example of `split`, score and summarise them.

    Returns (metrics, predictions): see `metrics.summarize` for the metrics, plus
    `truncated_fraction` (completions cut at `max_new_tokens` before an EOS), and one
    prediction per example {index, prompt, answer, completions, extracted, normalized,
    timed_out, rewards, correct, lengths, finished}. `temperature=0` is greedy. Sampling
    draws from one CPU generator seeded with `seed`, so a result is reproducible for a given
    seed, batch_size and device. `skip_special_tokens`: whether the completions the reward
    reads omit special tokens (`dataset.reward.skip_special_tokens`).
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
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, generator=generator,
                    skip_special_tokens=skip_special_tokens)  # fmt: skip
    predictions: list[dict[str, Any]] = []
    with _progress(progress, len(chosen)) as advance:
        for start in range(0, len(chosen), per_call):
            chunk = chosen[start : start + per_call]
            predictions += _sample_and_score(
                model, tokenizer, task, chunk, num_samples, max_new_tokens, batch_size, sampling
            )
            advance(len(chunk))
    metrics = summarize(predictions, num_samples)
    finished = [ok for p in predictions for ok in p["finished"]]
    count = metrics.pop("num_examples")
    metrics["truncated_fraction"] = 1 - sum(finished) / len(finished)
    metrics["num_examples"] = count
    return metrics, predictions


def length_limit_warning(metrics: dict[str, float], limit: int, key: str) -> str | None:
    """A one-line warning when most completions were cut at the length limit, naming `key`
    (the setting that raises it); None otherwise.

    An answer cut before it is written scores 0, so an accuracy of 0 can mean "too short",
    not "wrong": SmolLM2 on the default task writes a sentence before its number.
    """
    cut = metrics.get("truncated_fraction", 0.0)
    if cut <= CUT_WARNING_FRACTION:
        return None
    return (
        f"{cut:.0%} of completions hit the {limit}-token limit before they ended (EOS), so "
        f"their answers may be cut off; raise {key} if the task needs longer answers"
    )


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
    from tic_grpo_cli.sampling import generate

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
    finished = gen.finished.tolist()
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
                "normalized": scored.normalized[rows],
                "timed_out": scored.timed_out[rows],
                "rewards": [float(r) for r in scored.rewards[rows]],
                "correct": [bool(c) for c in scored.correct[rows]],
                "lengths": [int(x) for x in lengths[rows]],
                # False: cut at max_new_tokens before an EOS.
                "finished": [bool(f) for f in finished[rows]],
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

    from tic_grpo_cli.runtime.console import console

    columns = ("evaluating", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, console=console()) as bar:
        task_id = bar.add_task("eval", total=total)
        yield lambda n: bar.advance(task_id, n)
