"""`tic-grpo score`: a JSONL of completions scored without a model, from the command line."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from tic_grpo_cli.cli import main


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


ROWS = [
    {"completion": "So \\boxed{9{,}500}.", "answer": "#### 9500", "id": "a"},
    {"completion": "The change is \\boxed{\u22123}.", "answer": "#### 3", "id": "b"},
    {"completion": "\\boxed{5}. Check: 2 + 3 = \\boxed{", "answer": "#### 5", "id": "c"},
    {"completion": "25+3*7", "answer": "46", "numbers": [3, 7, 25], "data_source": "countdown"},
]


def test_score_writes_verdicts_and_prints_a_summary(tmp_path, capsys):
    source = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    out = tmp_path / "scored.jsonl"
    assert main(["score", f"input={source}", f"output={out}"]) == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows[:3]] == ["a", "b", "c"]  # input fields kept
    assert [r["correct"] for r in rows] == [True, False, False, True]
    assert [r["normalized"] for r in rows] == ["9500", "-3", None, "25+3*7"]
    assert [r["extracted"] for r in rows] == ["9{,}500", "\u22123", None, "25+3*7"]
    assert [r["reward"] for r in rows] == [1.0, 0.0, 0.0, 1.0]
    assert not any(r["timed_out"] for r in rows)
    text = capsys.readouterr().out
    assert "accuracy" in text and "0.500" in text  # 2 of 4
    assert "unparseable_fraction" in text and "0.250" in text  # the unfinished box


def test_score_rescores_eval_predictions_with_another_scorer(tmp_path):
    predictions = [
        {
            "index": 0,
            "prompt": "q",
            "answer": "1000",
            "completions": ["1,000 apples", "1000.0", "999"],
            "extracted": ["1", "1000.0", "999"],
            "correct": [False, True, False],
            "rewards": [0.0, 1.0, 0.0],
        }
    ]
    source = write_jsonl(tmp_path / "predictions.jsonl", predictions)
    out = tmp_path / "rescored.jsonl"
    assert main(["score", f"input={source}", "scorer=number", f"output={out}"]) == 0
    (row,) = read_jsonl(out)
    assert row["correct"] == [True, True, False]
    assert row["normalized"] == ["1000", "1000", "999"]
    assert row["extracted"] == ["1,000", "1000.0", "999"]
    assert row["reward"] == [1.0, 1.0, 0.0] and "rewards" not in row  # no stale eval rewards


def test_score_with_weighted_reward_functions(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_terms.py").write_text(
        textwrap.dedent("""
        def short(completions, **fields):
            return [float(len(c) < 10) for c in completions]
    """)
    )
    monkeypatch.chdir(tmp_path)  # a module beside the data needs no install
    source = write_jsonl(tmp_path / "mine.jsonl", ROWS[:2])
    out = tmp_path / "scored.jsonl"
    args = ["reward.fns=[my_terms:short]", "reward.weights=[0.5]", f"output={out}"]
    assert main(["score", f"input={source}", "scorer=gsm8k", *args]) == 0
    # correct + 0.5 * short: "So \boxed{9{,}500}." is 19 characters, not short.
    rows = read_jsonl(out)
    assert [r["reward"] for r in rows] == [1.0, 0.0]
    assert "reward/short" in capsys.readouterr().out
    # Each row says how its reward adds up: every term, unweighted.
    assert [(r["reward/correct"], r["reward/short"]) for r in rows] == [(1.0, 0.0), (0.0, 0.0)]


def test_score_rows_of_a_completions_list_carry_each_term_per_completion(tmp_path):
    rows = [{"completions": ["<a>5</a>", "5", "4"], "answer": "5"}]
    source = write_jsonl(tmp_path / "predictions.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    # Quoted as a shell passes 'reward.format_pattern="<a>.*</a>"': Hydra's grammar needs it.
    args = ["scorer=number", 'reward.format_pattern="<a>.*</a>"', "reward.format_weight=0.5"]
    assert main(["score", f"input={source}", *args, f"output={out}"]) == 0
    (row,) = read_jsonl(out)
    assert row["reward/correct"] == [1.0, 1.0, 0.0]
    assert row["reward/format"] == [1.0, 0.0, 0.0]
    assert row["reward"] == [1.5, 1.0, 0.0]


@pytest.mark.parametrize(
    "rows_text,args,message",
    [
        ('{"completion": "1"}\n', [], r"mine.jsonl line 1: no 'answer' field"),
        ('{"answer": "1"}\n', [], r"line 1: no 'completion' field"),
        ("not json\n", [], r"line 1: not JSON"),
        ("", [], r"no rows"),
        ('{"completion": "1", "answer": "1"}\n', ["scorer=maths"], r"scorer: got 'maths'"),
        (
            '{"completion": "1", "answer": "1"}\n',
            ["scorrer=math"],
            r"scorrer: no such config key; did you mean scorer\?",
        ),
        ('{"completion": "1", "answer": "1"}\n', ["scorer=countdown"], r"needs a `numbers`"),
        ('{"completion": "1", "answer": "1"}\n', ["reward.fns=[x]"], r"reward\.fns: got 'x'"),
    ],
)
def test_score_bad_input_is_one_line(tmp_path, capsys, rows_text, args, message):
    source = tmp_path / "mine.jsonl"
    source.write_text(rows_text, encoding="utf-8")
    assert main(["score", f"input={source}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_score_never_overwrites_and_reads_what_exists(tmp_path, capsys):
    assert main(["score", f"input={tmp_path / 'missing.jsonl'}"]) == 2
    assert "missing.jsonl: cannot read it" in capsys.readouterr().err
    source = write_jsonl(tmp_path / "mine.jsonl", ROWS[:1])
    assert main(["score", f"input={source}", f"output={source}"]) == 2
    assert "exists; choose a new file name" in capsys.readouterr().err
    assert read_jsonl(source) == ROWS[:1]  # untouched
    assert main(["score"]) == 0 and "usage: tic-grpo score" in capsys.readouterr().out


def test_score_is_a_hydra_app_that_writes_nothing_of_its_own(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["score", "--cfg", "job", "input=mine.jsonl", "scorer=math"]) == 0
    shown = capsys.readouterr().out
    assert "input: mine.jsonl" in shown and "scorer: math" in shown
    assert main(["score", "--help"]) == 0
    assert "usage: tic-grpo score input=FILE.jsonl" in capsys.readouterr().out
    source = write_jsonl(tmp_path / "mine.jsonl", ROWS[:1])
    assert main(["score", f"input={source}", "hydra.job.name=mine"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.jsonl"]  # no run dir, no log
