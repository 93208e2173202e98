"""The eval table."""

from __future__ import annotations

from tic_grpo_cli.evaluation.report import print_table


def test_sampled_accuracy_is_named_avg_at_k_in_the_table(capsys):
    metrics = {"accuracy": 0.25, "avg@4": 0.25, "pass@1": 0.25, "pass@4": 0.5, "maj@4": 0.5}
    entries = [{"label": "step_4", "checkpoint": "c", "step": 4, "metrics": metrics}]
    print_table(entries, "t")
    header = next(line for line in capsys.readouterr().out.splitlines() if "checkpoint" in line)
    assert header.split("┃")[2].strip() == "avg@4"
    assert " acc " not in header and "pass@1" not in header
