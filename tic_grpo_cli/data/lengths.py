"""Prompts checked against the limits before any model loads: `dataset.max_prompt_length`
and the model's context (prompt + `dataset.max_completion_length` tokens).

Every prompt of a checked split is rendered and tokenized as the sampler will feed it
(`encoding.prompt_ids`), so a chat template that refuses a prompt fails here too, in one
line, rather than after the model has loaded.
"""

from __future__ import annotations

import logging
from typing import Any

from tic_grpo_cli.data.task import Task
from tic_grpo_cli.encoding import prompt_ids
from tic_grpo_cli.errors import UserError

log = logging.getLogger("tic_grpo")

# Prompts rendered and tokenized per batch.
BATCH = 1024
# What tokenizers store as model_max_length when they know of no limit.
NO_LIMIT = 10**9


def prompt_lengths(task: Task, split: str, tokenizer: Any) -> list[int]:
    """The token count of every prompt of a built split, in order."""
    examples = task.built(split)
    lengths: list[int] = []
    for start in range(0, len(examples or ()), BATCH):
        batch = examples[start : start + BATCH]
        lengths += [len(ids) for ids in prompt_ids(tokenizer, [e["prompt"] for e in batch])]
    return lengths


def completion_limit(key: str, value: int, cfg: Any) -> tuple[str, int]:
    """The generation limit `key`=`value` (trainer.max_completion_length, eval.max_new_tokens)
    as the context check names it: by the dataset key it follows unless set apart from it."""
    same = value == cfg.max_completion_length
    return ("dataset.max_completion_length" if same else key), value


def check_prompts(
    task: Task,
    cfg: Any,
    tokenizer: Any,
    splits: tuple[str, ...],
    completion: tuple[str, int] | None = None,
) -> None:
    """Refuse (or with `dataset.skip_bad_rows`, skip and count) prompts longer than
    `cfg.max_prompt_length` tokens in each of `splits` that the task built; then refuse a
    longest prompt that leaves no room for the completions in the model's context
    (`tokenizer.model_max_length`, set from its config by `models.load_tokenizer`).
    `completion`: (key, tokens) of the generation limit, `completion_limit`'s; default
    `cfg.max_completion_length`. Raises UserError naming the key to change."""
    limit = cfg.max_prompt_length
    key, completion = completion or ("dataset.max_completion_length", cfg.max_completion_length)
    context = tokenizer.model_max_length
    context = context if context and context < NO_LIMIT else None
    for split in splits:
        if not task.built(split):
            continue
        lengths = prompt_lengths(task, split, tokenizer)
        over = [i for i, n in enumerate(lengths) if limit is not None and n > limit]
        if over:
            longest = max(over, key=lambda i: lengths[i])
            where = (
                f"{len(over)} of {len(lengths)} {split} prompts are longer (longest "
                f"{lengths[longest]} tokens, row {longest})"
            )
            if not cfg.skip_bad_rows:
                raise UserError(
                    f"dataset.max_prompt_length={limit}: {where}; raise dataset.max_prompt_length, "
                    "shorten them, or set dataset.skip_bad_rows=true to skip them"
                )
            log.warning("dataset.max_prompt_length=%d: %s; skipped", limit, where)
            skipped = set(over)
            task.keep(split, [i for i in range(len(lengths)) if i not in skipped])
            lengths = [n for i, n in enumerate(lengths) if i not in skipped]
        if context is not None and lengths and max(lengths) + completion > context:
            raise UserError(
                f"{key}={completion}: the longest {split} prompt ({max(lengths)} tokens) plus "
                f"{completion} completion tokens exceed the model's context of {context} "
                f"tokens (max_position_embeddings); lower {key} to {context - max(lengths)}, "
                "or drop the long prompts (dataset.max_prompt_length with "
                "dataset.skip_bad_rows=true)"
            )
