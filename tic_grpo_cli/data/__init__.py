"""Tasks: examples for a train and a held-out test split, and the reward that scores them.

task = build_task(dataset_cfg, tokenizer)
task.train[i] -> {"prompt": final model input, "answer": str, "question": raw prompt, ...}
task.score(completions, examples) -> RewardResult(rewards, correct, extracted, terms)
"""

from tic_grpo_cli.data.rewards import RewardResult
from tic_grpo_cli.data.task import Examples, Task, build_task

__all__ = ["Examples", "RewardResult", "Task", "build_task"]
