"""Every scorer on hand-written right, wrong and malformed completions; format term; user fns."""

from __future__ import annotations

import textwrap

import pytest
from omegaconf import OmegaConf

from tic_grpo_cli.config.schema import RewardConfig
from tic_grpo_cli.config.validation import validate_reward
from tic_grpo_cli.data.rewards import Rewarder, auto_scorer, score_all
from tic_grpo_cli.data.verify import TIMED_OUT, shared_verifier
from tic_grpo_cli.errors import UserError


def score(scorer: str, completion: str, example: dict):
    return score_all(scorer, [completion], [example], shared_verifier(5.0))[0]


def check(scorer: str, answer, cases: list[tuple[str, bool]], **fields):
    example = {"answer": answer, **fields}
    examples = [example] * len(cases)
    verdicts = score_all(scorer, [c for c, _ in cases], examples, shared_verifier(5.0))
    got = [v.correct for v in verdicts]
    assert got == [want for _, want in cases], list(zip(cases, got, strict=True))


def test_exact():
    check(
        "exact",
        "-5",
        [
            ("-5", True),
            ("  -5\n", True),
            ("-5.0", False),
            ("- 5", False),
            ("", False),
            ("-5 and more", False),
        ],
    )


def test_number_takes_the_first_number():
    check(
        "number",
        "122",
        [
            ("122", True),
            ("The sum is 122.", True),
            ("122 then 7", True),
            ("7 then 122", False),
            ("no digits", False),
            ("", False),
        ],
    )


def test_gsm8k_reference_after_hashes_and_commas():
    reference = "Natalia sold 48/2 = 24 clips...\n#### 1,234"
    check(
        "gsm8k",
        reference,
        [
            ("So the total is 1234.", True),
            ("The answer is 1,234", True),
            ("#### 1,234", True),
            ("#### 1234\n\nQuestion: what is 5+5? #### 10", True),  # the first #### counts
            ("#### 1234 and then 99", True),  # the first number after ####
            ("\\boxed{1,234}", True),
            ("$1,234.00", True),
            ("1234 is wrong, it is 1233", False),
            ("no number", False),
            ("", False),
        ],
    )


def test_gsm8k_plain_reference_as_in_verl_files():
    check("gsm8k", "72", [("72", True), ("so 72 clips", True), ("#### 71", False)])


def test_math_symbolic_equivalence():
    check(
        "math",
        "\\frac{1}{2}",
        [
            ("The answer is \\boxed{0.5}", True),
            ("\\boxed{\\frac{2}{4}}", True),
            ("\\boxed{\\frac{1}{3}}", False),
            ("I cannot solve this", False),
            ("", False),
            ("\\boxed{\\frac{1}{2", False),  # cut off by the length limit
        ],
    )
    check("math", "0.5", [("\\boxed{\\frac{1}{2}}", True)])
    check(
        "math",
        "(3,\\frac{\\pi}{2})",
        [("\\boxed{(3, \\pi/2)}", True), ("\\boxed{(3, \\pi)}", False)],
    )
    check("math", "34", [("Work...\nAnswer: 34", True), ("Answer: 35", False)])


def test_math_extracted_text_and_normalized_answer():
    verdict = score("math", "so \\boxed{\\frac{2}{4}}", {"answer": "1/2"})
    assert (verdict.extracted, verdict.normalized) == ("\\frac{2}{4}", "1/2")


def test_countdown_scorer():
    fields = {"numbers": [3, 7, 25], "target": 46}
    check(
        "countdown",
        "46",
        [
            ("25+3*7", True),
            ("(25 + 3 * 7) = 46", True),
            ("<think>try</think><answer>7*3+25</answer>", True),
            ("25+21", False),  # 21 is not given
            ("25+7+7+7", False),  # reuses 7
            ("25/(3-3)+46", False),  # reuses 3 and divides by zero
            ("25/(7-7)", False),  # division by zero
            ("25+3*7+0", False),  # 0 is not given
            ("-25+71", False),  # unary minus is not an operator here
            ("25+3**7", False),
            ("__import__('os').system('true')", False),
            ("", False),
            ("46", False),
        ],
        **fields,
    )
    check("countdown", "24", [("(7-3)*(7-1)", True)], numbers=[7, 3, 7, 1], target=24)
    check(
        "countdown",
        "2",
        [("7/(3+0.5)", False), ("(25-7)/(3*3)", False)],
        numbers=[25, 7, 3],
        target=2,
    )


def test_auto_picks_by_data_source_then_answer_shape():
    assert auto_scorer({"answer": "7", "data_source": "openai/gsm8k"}) == "gsm8k"
    assert auto_scorer({"answer": "x #### 7"}) == "gsm8k"
    assert auto_scorer({"answer": "7", "data_source": "countdown"}) == "countdown"
    assert auto_scorer({"answer": "\\frac12", "data_source": "math_dapo"}) == "math"
    assert score("auto", "#### 7", {"answer": "7", "data_source": "openai/gsm8k"}).correct
    assert score("auto", "\\boxed{0.5}", {"answer": "\\frac12"}).correct


def rewarder(scorer: str = "exact", **overrides) -> Rewarder:
    cfg = OmegaConf.merge(OmegaConf.structured(RewardConfig), {"scorer": "auto", **overrides})
    return Rewarder(cfg, scorer)


def test_format_term_is_separate_and_weighted():
    r = rewarder("number", format_pattern=r"<answer>.*</answer>", format_weight=0.5)
    result = r(["<answer>7</answer>", "7", "<answer>8</answer>"], [{"answer": "7"}] * 3)
    assert result.terms == {"correct": [1.0, 1.0, 0.0], "format": [1.0, 0.0, 1.0]}
    assert result.rewards == [1.5, 1.0, 0.5]
    assert result.correct == [True, True, False]
    assert result.extracted == ["7", "7", "8"]


def test_completions_and_examples_must_pair_up():
    with pytest.raises(ValueError, match="2 completions for 1 examples"):
        rewarder()(["a", "b"], [{"answer": "a"}])


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(
        textwrap.dedent("""
        import numpy as np

        def length_match(completions, answer, **fields):
            assert "prompt" in fields and "question" in fields
            return [float(c.strip() == a) for c, a in zip(completions, answer)]

        def numpy_bools(completions, **fields):
            return np.array([c.startswith("2") for c in completions])

        def numpy_scalars(completions, **fields):
            return [np.float32(0.5), np.bool_(True)][: len(completions)]

        def half(completions, **fields):
            return [0.5] * len(completions)

        def graded(completions, answer, **fields):
            return {"reward": [0.3, 0.9], "correct": np.array([False, True])}

        def broken(completions, **fields):
            raise KeyError("solution")

        def short(completions, **fields):
            return [1.0]

        def nan(completions, **fields):
            return [float("nan")] * len(completions)

        def none_second(completions, **fields):
            return [1.0, None]

        def text(completions, **fields):
            return "1.0"

        def fails_in_training(completions, **fields):  # evaluation scores 3, a rollout 4
            if len(completions) == 4:
                raise KeyError("solution")
            return [0.0] * len(completions)

        not_a_function = 3
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards_mod"


EXAMPLES = [{"prompt": "1+1=", "question": "1+1=", "answer": "2"}] * 2


def test_user_reward_function_gets_completions_and_fields(reward_module):
    r = rewarder(fn=f"{reward_module}:length_match")
    result = r(["2", "3"], EXAMPLES)
    assert result.rewards == [1.0, 0.0] and result.correct == [True, False]
    assert result.terms == {"length_match": [1.0, 0.0]}


@pytest.mark.parametrize(
    "name,rewards", [("numpy_bools", [1.0, 0.0]), ("numpy_scalars", [0.5, 1.0])]
)
def test_user_reward_function_may_return_numpy(reward_module, name, rewards):
    assert rewarder(fn=f"{reward_module}:{name}")(["2", "3"], EXAMPLES).rewards == rewards


def test_accuracy_with_a_user_function_is_not_its_reward(reward_module):
    # No threshold and no `correct` returned: the scorer judges (exact: "2" is right).
    r = rewarder(fn=f"{reward_module}:half")
    assert r(["2", "3"], EXAMPLES).correct == [True, False]
    assert "exact scorer" in r.accuracy_source()
    # A threshold names what correct means.
    r = rewarder(fn=f"{reward_module}:half", correct_threshold=0.5)
    assert r(["2", "3"], EXAMPLES).correct == [True, True]
    # The function reports correctness itself.
    result = rewarder(fn=f"{reward_module}:graded")(["3", "2"], EXAMPLES)
    assert result.rewards == [0.3, 0.9] and result.correct == [False, True]


def test_several_weighted_reward_terms(reward_module):
    r = rewarder(
        fns=[f"{reward_module}:half", f"{reward_module}:numpy_bools"],
        weights=[2.0, -0.5],
        format_pattern="^2",
        format_weight=0.25,
    )
    result = r(["2", "3"], EXAMPLES)
    # correct + 0.25 * format + 2 * 0.5 - 0.5 * startswith("2"), by hand:
    assert result.rewards == [1 + 0.25 + 1 - 0.5, 0 + 0 + 1 - 0]
    assert result.terms == {
        "correct": [1.0, 0.0],
        "format": [1.0, 0.0],
        "half": [0.5, 0.5],
        "numpy_bools": [1.0, 0.0],
    }


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"fns": ["m:a", "m:b"], "weights": [1.0]}, r"reward\.weights: 1 weights for 2 functions"),
        ({"fns": ["m.a"]}, r"reward\.fns: got 'm\.a'; expected package\.module:function"),
        ({"correct_threshold": 0.5}, r"reward\.correct_threshold: applies to .*reward\.fn only"),
        ({"verify_timeout": 0}, r"reward\.verify_timeout: must be > 0"),
    ],
)
def test_reward_config_errors_name_the_key(overrides, match):
    cfg = OmegaConf.merge(OmegaConf.structured(RewardConfig), overrides)
    with pytest.raises(UserError, match=f"^dataset\\.{match}"):
        validate_reward(cfg)


@pytest.mark.parametrize(
    "name,match",
    [
        ("broken", r"reward function my_rewards_mod:broken failed: KeyError: 'solution'"),
        ("short", r"my_rewards_mod:short returned 1 rewards for 2 completions"),
        ("nan", r"my_rewards_mod:nan returned nan for completion 0"),
        ("none_second", r"my_rewards_mod:none_second returned None for completion 1"),
        ("text", r"my_rewards_mod:text returned a str, not one value per completion"),
    ],
)
def test_user_reward_function_errors_name_it(reward_module, name, match):
    for key in ("fn", "fns"):
        r = rewarder(
            **{key: f"{reward_module}:{name}" if key == "fn" else [f"{reward_module}:{name}"]}
        )
        with pytest.raises(UserError, match=match):
            r(["a", "b"], [{"prompt": "p", "answer": "a"}] * 2)


def test_user_reward_function_import_errors(reward_module):
    with pytest.raises(UserError, match=r"dataset.reward.fn: cannot import 'no_such_mod_xyz'"):
        rewarder(fn="no_such_mod_xyz:f")
    with pytest.raises(UserError, match=r"dataset.reward.fns: module .* no function 'not_a_func"):
        rewarder(fns=[f"{reward_module}:not_a_function"])


def test_math_scorer_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        verdict = pool.submit(score, "math", "\\boxed{0.5}", {"answer": "\\frac{1}{2}"}).result()
    assert verdict.correct


def test_timed_out_verdicts_are_wrong_and_counted(monkeypatch):
    r = rewarder("math")
    monkeypatch.setattr(r, "verifier", lambda pairs: [TIMED_OUT for _ in pairs])
    result = r(["\\boxed{1}"], [{"answer": "1"}])
    assert result.correct == [False] and result.timed_out == [True]
    assert result.terms["timed_out"] == [1.0]


def _train_with_reward(fn: str, run_dir, cwd, wandb_mode: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "WANDB_MODE": wandb_mode, "PYTHONPATH": str(cwd)}
    env.pop("HYDRA_FULL_ERROR", None)
    tiny = [
        "trainer.max_steps=2",
        "trainer.rollout_batch_size=2",
        "trainer.minibatch_size=1",
        "trainer.group_size=2",
        "trainer.eval_every=1",
        "trainer.eval_limit=3",
        "dataset.train_size=16",
        "dataset.test_size=4",
    ]
    return subprocess.run(
        [sys.executable, "-m", "tic_grpo_cli", "train", f"dataset.reward.fn={fn}", *tiny,
         f"wandb.mode={wandb_mode}", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, env=env, timeout=120, cwd=cwd,
    )  # fmt: skip


def test_a_reward_function_failing_mid_run_leaves_its_error_in_train_log(reward_module, tmp_path):
    """The step-0 evaluation is written before the first rollout fails, so the run dir stays;
    before, its train.log ended without saying why the run stopped."""
    run_dir = tmp_path / "run"
    out = _train_with_reward(f"{reward_module}:fails_in_training", run_dir, tmp_path, "disabled")
    line = "error: reward function my_rewards_mod:fails_in_training failed: KeyError: 'solution'"
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith(line)
    assert (run_dir / "metrics.jsonl").is_file()
    assert line in (run_dir / "train.log").read_text()


def test_a_reward_function_failing_at_once_leaves_no_run_dir(reward_module, tmp_path):
    """It fails in the step-0 evaluation, after W&B (offline, the default) made its files:
    no results, so no run dir, as for any other input error."""
    run_dir = tmp_path / "out" / "run"
    out = _train_with_reward(f"{reward_module}:broken", run_dir, tmp_path, "offline")
    assert out.returncode == 2 and "my_rewards_mod:broken failed" in out.stderr
    assert not (tmp_path / "out").exists()
