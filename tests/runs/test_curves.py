"""curves.png as a reader keeps it: the run named, whole-number steps, resumes marked."""

from __future__ import annotations

import logging

import pytest
from hydra import compose, initialize_config_module

from tic_grpo_cli.config.schema import register_configs
from tic_grpo_cli.runs import curves
from tic_grpo_cli.runs.curves import curves_figure, resume_steps
from tic_grpo_cli.train.loop import train

SMALL = [
    "trainer.rollout_batch_size=4",
    "trainer.group_size=4",
    "trainer.minibatch_size=2",
    "trainer.eval_every=2",
    "trainer.eval_limit=8",
    "trainer.save_every=4",
    "wandb.mode=disabled",
    "hardware.num_threads=1",
]


def test_short_runs_get_whole_step_ticks_and_a_title():
    rows = [{"step": s, "reward/mean": 0.1 * s} for s in (1, 2, 3)]
    rows += [{"step": s, "eval/accuracy": 0.2} for s in (0, 3)]
    fig = curves_figure(rows, "tic · tiny · arithmetic · seed 0")
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert fig._suptitle.get_text() == "tic · tiny · arithmetic · seed 0"


def test_resumes_are_marked_on_both_panels():
    rows = [{"step": s, "reward/mean": 0.5, "eval/accuracy": 0.5} for s in range(1, 9)]
    fig = curves_figure(rows, resumed=[4])
    for ax in fig.axes:
        marks = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert marks == [4]
        assert "resumed" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_resume_steps_follow_the_run_log_and_its_rewinds(tmp_path):
    (tmp_path / "train.log").write_text(
        "[t][tic_grpo][INFO] step 2 | reward 0.5\n"
        "[t][tic_grpo][INFO] resumed from /r/checkpoints/step_4 at step 4\n"
        "[t][tic_grpo][INFO] resumed from /r/checkpoints/step_8 at step 8\n"
        "[t][tic_grpo][INFO] resumed from /r/checkpoints/step_6 at step 6\n"  # rewound
    )
    assert resume_steps(tmp_path) == [4, 6]
    assert resume_steps(tmp_path / "missing") == []


def compose_train(*overrides: str):
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose("train", overrides=[*SMALL, *overrides])


@pytest.fixture
def run_log(tmp_path):
    """The run's train.log, as Hydra's logging config writes it under the CLI."""
    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger("tic_grpo").addHandler(handler)
    logging.getLogger("tic_grpo").setLevel(logging.INFO)
    yield tmp_path
    logging.getLogger("tic_grpo").removeHandler(handler)
    handler.close()


def test_a_resumed_runs_curves_name_it_and_mark_the_resume(run_log, monkeypatch):
    drawn = []

    def spy(rows, title="", resumed=()):
        drawn.append((title, list(resumed), max(r["step"] for r in rows)))
        return real(rows, title, resumed)

    real = curves.curves_figure
    monkeypatch.setattr(curves, "curves_figure", spy)
    train(compose_train("trainer.max_steps=4", "seed=3"), run_log)
    train(compose_train("trainer.max_steps=8", "seed=3", "resume=auto"), run_log)
    title, resumed, last = drawn[-1]
    assert title == "tic · tiny · arithmetic · seed 3"
    assert resumed == [4] and last == 8
    assert (run_log / "curves.png").stat().st_size > 10_000
