"""Tasks: examples for a train and a held-out test split, and the reward that scores them.

task = build_task(dataset_cfg, tokenizer)
task.train[i] -> {"prompt": final model input, "answer": str, "question": raw prompt, ...}
task.score(completions, examples) -> RewardResult(rewards, correct, extracted, terms)

Where things are: task.py (Task, Examples), embedded.py (arithmetic, countdown, chain), hf.py (your
own files and hub data sets), prompts.py (templates, chat), rewards.py (scorers, reward fns).
"""

from typing import Any

from tic_grpo_cli.data.embedded import build_embedded_task
from tic_grpo_cli.data.hf import build_hf_task
from tic_grpo_cli.data.lengths import check_prompts
from tic_grpo_cli.data.rewards import RewardResult
from tic_grpo_cli.data.task import Examples, Task
from tic_grpo_cli.errors import UserError

__all__ = ["Examples", "RewardResult", "Task", "build_task"]


def build_task(
    cfg: Any, tokenizer: Any = None, check_splits: tuple[str, ...] = ("train", "test")
) -> Task:
    """The task a `dataset` config node describes; `tokenizer` decides the chat template
    (None: plain text, fine for the embedded tasks). Data errors raise UserError here,
    before any model is needed; with a tokenizer, so do a chat template that refuses the
    prompts and prompts too long for `dataset.max_prompt_length` or, with
    `dataset.max_completion_length` tokens after them, the model's context, in the
    `check_splits` the task has (lengths.check_prompts, which takes another limit)."""
    if cfg.kind in ("arithmetic", "countdown", "chain"):
        task = build_embedded_task(cfg, tokenizer)
    elif cfg.kind == "hf":
        task = build_hf_task(cfg, tokenizer)
    else:
        raise UserError(
            f"dataset.kind: got {cfg.kind!r}; allowed: arithmetic, countdown, chain, hf"
        )
    if tokenizer is not None:
        check_prompts(task, cfg, tokenizer, check_splits)
    return task
