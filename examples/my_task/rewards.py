"""Reward functions for the example task, in TRL's convention: `fn(completions, **fields)`.

`completions` is a list of strings; every field of the examples (here `problem`,
`solution`, and the `prompt`, `question`, `answer` the loader adds) arrives as a keyword
argument holding a list, one entry per completion. Return one number per completion, or a
dict with the rewards and which completions are correct (what `accuracy` then counts).
"""

from __future__ import annotations


def close(completions: list[str], solution: list[int], **fields) -> dict[str, list]:
    """Partial credit: 1 for the right sum, 0.1 less per unit it is off (0 from 10 off, or
    when the completion is not a number). Only the right sum counts as correct, so
    `accuracy` stays the fraction of right answers, not the mean reward."""
    rewards, correct = [], []
    for text, target in zip(completions, solution, strict=True):
        try:
            miss = abs(int(text.strip()) - int(target))
        except ValueError:
            miss = 10
        rewards.append(max(0.0, 1.0 - miss / 10))
        correct.append(miss == 0)
    return {"reward": rewards, "correct": correct}


def brevity(completions: list[str], **fields) -> list[float]:
    """A shaping term: minus 0.1 per character beyond the three a sum below 200 needs."""
    return [-0.1 * max(0, len(text.strip()) - 3) for text in completions]
