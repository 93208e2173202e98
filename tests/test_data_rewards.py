"""Every scorer on hand-written right, wrong and malformed completions; format term; user fns."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from tic_grpo_cli.config import RewardConfig
from tic_grpo_cli.data import countdown
from tic_grpo_cli.data.rewards import (
    SCORERS,
    Rewarder,
    last_boxed,
    score_auto,
)
from tic_grpo_cli.errors import UserError


def check(scorer: str, answer, cases: list[tuple[str, bool]], **fields):
    example = {"answer": answer, **fields}
    got = [SCORERS[scorer](completion, example)[0] for completion, _ in cases]
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


def test_number_takes_the_first_integer():
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


def test_math_extracted_text():
    _, extracted = SCORERS["math"]("so \\boxed{\\frac{2}{4}}", {"answer": "1/2"})
    assert extracted == "\\frac{2}{4}"


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


def test_countdown_division_is_exact():
    # 7/2*2 = 7 only with exact fractions.
    assert countdown.score("7/2*2", [7, 2, 2], 7) == (True, "7/2*2")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-*/() =<>answer\n.x_", max_size=60))
def test_countdown_scorer_never_raises(text):
    correct, _ = countdown.score(text, [1, 2, 3], 6)
    assert isinstance(correct, bool)


def test_last_boxed_matches_nested_braces():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{open") is None and last_boxed("none") is None


def test_auto_picks_by_data_source_then_answer_shape():
    assert score_auto("#### 7", {"answer": "7", "data_source": "openai/gsm8k"})[0]
    assert score_auto("#### 7", {"answer": "x #### 7"})[0]
    assert score_auto(
        "3+4", {"answer": "7", "data_source": "countdown", "numbers": [3, 4], "target": 7}
    )[0]
    assert score_auto("\\boxed{0.5}", {"answer": "\\frac12", "data_source": "math_dapo"})[0]


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
        def length_match(completions, answer, **fields):
            assert "prompt" in fields and "question" in fields
            return [float(c.strip() == a) for c, a in zip(completions, answer)]

        def broken(completions, **fields):
            raise KeyError("solution")

        def short(completions, **fields):
            return [1.0]

        def nan(completions, **fields):
            return [float("nan")] * len(completions)

        not_a_function = 3
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards_mod"


def test_user_reward_function_gets_completions_and_fields(reward_module):
    r = rewarder(fn=f"{reward_module}:length_match")
    examples = [{"prompt": "1+1=", "question": "1+1=", "answer": "2"}] * 2
    result = r(["2", "3"], examples)
    assert result.rewards == [1.0, 0.0] and result.correct == [True, False]
    assert result.terms == {"correct": [1.0, 0.0]}


@pytest.mark.parametrize(
    "name,match",
    [
        ("broken", r"reward function my_rewards_mod:broken failed: KeyError: 'solution'"),
        ("short", r"my_rewards_mod:short returned 1 values for 2 completions"),
        ("nan", r"my_rewards_mod:nan returned nan for completion 0"),
    ],
)
def test_user_reward_function_errors_name_it(reward_module, name, match):
    r = rewarder(fn=f"{reward_module}:{name}")
    with pytest.raises(UserError, match=match):
        r(["a", "b"], [{"prompt": "p", "answer": "a"}] * 2)


def test_user_reward_function_import_errors(reward_module):
    with pytest.raises(UserError, match=r"cannot import 'no_such_mod_xyz'"):
        rewarder(fn="no_such_mod_xyz:f")
    with pytest.raises(UserError, match=r"has no function 'not_a_function'"):
        rewarder(fn=f"{reward_module}:not_a_function")


def test_math_scorer_works_off_the_main_thread():
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        ok, _ = pool.submit(SCORERS["math"], "\\boxed{0.5}", {"answer": "\\frac{1}{2}"}).result()
    assert ok
