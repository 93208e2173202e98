"""Warnings for a run that cannot learn, from each rollout's metrics.

Two failures look like a quiet, healthy run in the log, since the loss of every algorithm
sits near zero anyway (README, "Why the loss sits near zero"):

- most completions hit the length limit, so their answers are cut off and score 0
  (`truncated_fraction`; a chatty instruct model at 96 tokens);
- no group has a spread of rewards (`frac_zero_std_groups` = 1): every advantage is 0, so
  the loss and the gradient are exactly 0 and the policy never changes.

`LearningSignals` is fed `rollout_metrics(...)` after each rollout and returns a one-line
warning, or None. It speaks once a condition has held for `patience` rollouts in a row (one
unlucky batch is not a diagnosis), then again every `every` rollouts while it lasts, so a
long log still shows it without repeating it on every line.
"""

from __future__ import annotations

from collections.abc import Mapping

from tic_grpo_cli.evaluation.model_eval import CUT_WARNING_FRACTION


class LearningSignals:
    """Counts consecutive rollouts without a learning signal; says what to change.

    `max_completion_length`: the rollout's token limit, named in the warning. `patience`:
    rollouts in a row before the first warning (>= 1). `every`: rollouts between repeats
    while the condition lasts (>= 1). Raises ValueError for a patience or period below 1.
    """

    def __init__(self, max_completion_length: int, patience: int = 3, every: int = 20):
        if patience < 1 or every < 1:
            raise ValueError(f"patience and every must be >= 1, got {patience} and {every}")
        self.limit, self.patience, self.every = max_completion_length, patience, every
        self.cut_streak = 0  # rollouts in a row with most completions cut at the limit
        self.flat_streak = 0  # rollouts in a row in which no group had a reward spread

    def __call__(self, metrics: Mapping[str, float]) -> str | None:
        """The warning for this rollout (`truncated_fraction`, `frac_zero_std_groups`,
        `accuracy` of `train.rollout.rollout_metrics`), or None. Missing keys count as a
        healthy rollout."""
        cut = float(metrics.get("truncated_fraction", 0.0))
        flat = float(metrics.get("frac_zero_std_groups", 0.0)) >= 1.0
        self.cut_streak = self.cut_streak + 1 if cut > CUT_WARNING_FRACTION else 0
        self.flat_streak = self.flat_streak + 1 if flat else 0
        parts = []
        if self._due(self.flat_streak):
            parts.append(self._flat(float(metrics.get("accuracy", 0.0))))
        if self._due(self.cut_streak) or (parts and self.cut_streak >= self.patience):
            parts.append(self._cut(cut))
        return "; ".join(parts) if parts else None

    def _due(self, streak: int) -> bool:
        return streak >= self.patience and (streak - self.patience) % self.every == 0

    def _flat(self, accuracy: float) -> str:
        if accuracy >= 1.0:
            why, fix = "every completion is correct", "give it harder problems"
        else:
            why = "no completion is correct" if accuracy <= 0.0 else "each group scores alike"
            fix = (
                "add partial credit (a format term: dataset.reward.format_pattern with "
                "dataset.reward.format_weight, or dataset.reward.fns), or a "
                "dataset.system_prompt that asks for the answer's format"
            )
        return (
            f"no learning signal: every group's completions got the same reward for "
            f"{self.flat_streak} rollouts in a row (frac_zero_std_groups 1.0; {why}), so the "
            f"advantages, loss and gradient are 0 and the model does not change; {fix}"
        )

    def _cut(self, cut: float) -> str:
        return (
            f"{cut:.0%} of completions hit the {self.limit}-token limit before they ended "
            f"(EOS) for {self.cut_streak} rollouts in a row, so their answers are cut off; "
            f"raise dataset.max_completion_length (trainer.max_completion_length for "
            f"training alone) if the task needs longer answers"
        )
