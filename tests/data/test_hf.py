"""Hugging Face loading on small local files the tests write, one per schema and format.

The hub configs (gsm8k, math500, dapo_math) are loaded too, with only their path pointed at
a local directory: the code path is the one a hub name takes.
"""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tic_grpo_cli.config.schema import DatasetConfig
from tic_grpo_cli.data import build_task
from tic_grpo_cli.errors import UserError

GSM8K_ROWS = [
    {
        "question": f"Tom has {i} apples and buys {i + 1}. How many?",
        "answer": f"{i}+{i + 1}\n#### {2 * i + 1:,}",
    }
    for i in range(0, 1200, 60)
]
VERL_ROWS = [
    {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
        "extra_info": {"split": "train", "index": i},
    }
    for i in range(12)
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def hf_cfg(tmp_path, path, **overrides):
    base = {
        "kind": "hf",
        "path": str(path),
        "cache_dir": str(tmp_path / "hf-cache"),
        "test_split": None,
        "test_size": 4,
    }
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), {**base, **overrides})


def writers():
    def jsonl(path, rows):
        return write_jsonl(path.with_suffix(".jsonl"), rows)

    def json_array(path, rows):
        path = path.with_suffix(".json")
        path.write_text(json.dumps(rows))
        return path

    def parquet(path, rows):
        datasets.Dataset.from_list(rows).to_parquet(str(path.with_suffix(".parquet")))
        return path.with_suffix(".parquet")

    def arrow(path, rows):
        table = pa.Table.from_pylist(rows)
        with (
            pa.OSFile(str(path.with_suffix(".arrow")), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(table)
        return path.with_suffix(".arrow")

    def save_to_disk(path, rows):
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
        return path

    return [jsonl, json_array, parquet, arrow, save_to_disk]


@pytest.mark.parametrize("write", writers(), ids=lambda w: w.__name__)
def test_each_local_format_loads_the_same_examples(tmp_path, write):
    path = write(tmp_path / "data", GSM8K_ROWS)
    task = build_task(hf_cfg(tmp_path, path, reward={"scorer": "gsm8k"}), tokenizer=None)
    assert len(task.train) + len(task.test) == len(GSM8K_ROWS)
    example = task.test[0]
    row = next(r for r in GSM8K_ROWS if r["question"] == example["question"])
    assert example["prompt"] == row["question"] and example["answer"] == row["answer"]
    gold = row["answer"].split("#### ")[1]
    assert task.score([f"#### {gold}", "#### -1"], [example, example]).correct == [True, False]


def test_a_local_file_loads_without_progress_bars(tmp_path, capfd):
    datasets.enable_progress_bars()
    build_task(hf_cfg(tmp_path, write_jsonl(tmp_path / "bars.jsonl", GSM8K_ROWS)))
    captured = capfd.readouterr()
    assert "Generating" not in captured.err + captured.out


def test_splits_stay_arrow_backed_and_render_on_access(tmp_path):
    task = build_task(hf_cfg(tmp_path, write_jsonl(tmp_path / "d.jsonl", GSM8K_ROWS)))
    assert isinstance(task.train.rows, datasets.Dataset)
    assert isinstance(task.test.rows, datasets.Dataset)


def test_held_out_rows_are_disjoint_even_with_repeated_prompts(tmp_path):
    rows = [r for r in GSM8K_ROWS for _ in range(5)]  # every prompt five times, as in DAPO
    task = build_task(hf_cfg(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows), test_size=3))
    test = [e["question"] for e in task.test]
    train = {e["question"] for e in task.train}
    assert len(test) == len(set(test)) == 3
    assert not train & set(test)
    assert len(train) == len(GSM8K_ROWS) - 3
    again = build_task(hf_cfg(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows), test_size=3))
    other = build_task(hf_cfg(tmp_path, tmp_path / "d.jsonl", test_size=3, seed=1))
    assert [e["question"] for e in again.test] == test != [e["question"] for e in other.test]


def test_directory_with_split_files_and_any_split_by_name(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", GSM8K_ROWS[:10])
    write_jsonl(folder / "test.jsonl", GSM8K_ROWS[10:15])
    write_jsonl(folder / "validation.jsonl", GSM8K_ROWS[15:])
    task = build_task(hf_cfg(tmp_path, folder, test_split="test"))
    assert (len(task.train), len(task.test)) == (10, 5)
    assert len(task.split("validation")) == len(GSM8K_ROWS) - 15
    with pytest.raises(UserError, match=r"unknown split 'dev' .*splits: test, train, validation"):
        task.split("dev")


def test_verl_parquet_is_recognised(tmp_path):
    path = tmp_path / "verl.parquet"
    datasets.Dataset.from_list(VERL_ROWS).to_parquet(str(path))
    cfg = hf_cfg(tmp_path, path, prompt_template="{prompt} Think step by step.")
    example = build_task(cfg).test[0]
    assert example["prompt"] == f"{example['question']} Think step by step."
    assert example["answer"] == str(2 * example["extra_info"]["index"])
    assert example["data_source"] == "openai/gsm8k"
    task = build_task(cfg)
    # scorer auto: the gsm8k data_source picks the gsm8k scorer.
    result = task.score([f"so {example['answer']}", "so 999"], [example, example])
    assert result.correct == [True, False]


def test_verl_countdown_ground_truth(tmp_path):
    rows = [
        {
            "data_source": "countdown",
            "prompt": [{"role": "user", "content": f"Make {t} from 3, 4, 5."}],
            "reward_model": {"style": "rule", "ground_truth": {"target": t, "numbers": [3, 4, 5]}},
        }
        for t in (12, 17, 23, 35, 60, 2, 4, 6)
    ]
    path = tmp_path / "cd.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    task = build_task(hf_cfg(tmp_path, path, test_size=2))
    example = next(e for e in [*task.train, *task.test] if e["target"] == 35)
    assert example["answer"] == "35" and example["numbers"] == [3, 4, 5]
    assert task.score(["(3+4)*5", "3*4*5"], [example, example]).correct == [True, False]


def test_chat_prompts_go_through_the_chat_template(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    path = tmp_path / "verl.parquet"
    datasets.Dataset.from_list(VERL_ROWS).to_parquet(str(path))
    cfg = hf_cfg(tmp_path, path, system_prompt="Be brief.")
    example = build_task(cfg, tokenizer).test[0]
    assert example["prompt"] == (
        f"<|system|>Be brief.\n<|user|>{example['question']}\n<|assistant|>"
    )


def test_dotted_answer_field_and_numeric_answers(tmp_path):
    rows = [{"q": f"{i}*2=", "meta": {"gold": 2 * i}} for i in range(10)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = hf_cfg(tmp_path, path, prompt_field="q", answer_field="meta.gold", test_size=2)
    example = build_task(cfg).train[0]
    assert example["answer"] == str(2 * int(example["question"].split("*")[0]))


@pytest.mark.parametrize(
    "rows,overrides,match",
    [
        (
            GSM8K_ROWS,
            {"prompt_field": "problem"},
            r"dataset\.prompt_field: no field 'problem' .*columns: question, answer",
        ),
        (
            GSM8K_ROWS,
            {"answer_field": "solution"},
            r"dataset\.answer_field: no field 'solution' .*columns: question, answer",
        ),
        (
            [{"question": "a", "answer": [1, 2]}] * 3,
            {},
            r"dataset\.answer_field: 'answer' .* holds .*; expected text or a number",
        ),
        (
            [{"question": {"x": 1}, "answer": "1"}] * 3,
            {},
            r"dataset\.prompt_field: 'question' .*expected text or a list of chat messages",
        ),
        (
            GSM8K_ROWS,
            {"test_split": "test"},
            r"dataset\.test_split: no split 'test' .*splits: train",
        ),
        (GSM8K_ROWS, {"prompt_template": "{prompt} {level}"}, r"no field 'level'.*fields: answer"),
    ],
)
def test_bad_input_fails_in_one_line(tmp_path, rows, overrides, match):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(UserError, match=match) as err:
        build_task(hf_cfg(tmp_path, path, **overrides))
    assert "\n" not in str(err.value)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(UserError, match=r"dataset\.path: .*missing\.jsonl does not exist"):
        build_task(hf_cfg(tmp_path, tmp_path / "missing.jsonl"))
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(UserError, match=r"dataset\.path: .*d\.txt is not a data file"):
        build_task(hf_cfg(tmp_path, tmp_path / "d.txt"))
    (tmp_path / "broken.jsonl").write_text('{"question": "a", "answer": 1}\n{not json\n')
    with pytest.raises(UserError, match=r"dataset\.path: cannot load .*broken\.jsonl"):
        build_task(hf_cfg(tmp_path, tmp_path / "broken.jsonl"))


def test_empty_data_set(tmp_path):
    path = tmp_path / "empty.parquet"
    datasets.Dataset.from_dict({"question": [], "answer": []}).cast(
        datasets.Features(
            {"question": datasets.Value("string"), "answer": datasets.Value("string")}
        )
    ).to_parquet(str(path))
    (tmp_path / "empty.jsonl").write_text("\n")
    for empty in (path, tmp_path / "empty.jsonl"):
        with pytest.raises(UserError, match=r"dataset\.path: .*empty\.\w+ is empty"):
            build_task(hf_cfg(tmp_path, empty))


def test_bad_rows_fail_by_name_or_are_skipped_and_counted(tmp_path):
    rows = [*GSM8K_ROWS, {"question": "", "answer": "#### 1"}, {"question": "q?", "answer": None}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    n = len(GSM8K_ROWS)
    with pytest.raises(UserError, match=rf"row {n}: the prompt is empty; .*skip_bad_rows=true"):
        build_task(hf_cfg(tmp_path, path))
    task = build_task(hf_cfg(tmp_path, path, skip_bad_rows=True))
    assert task.skipped == {"train": 2}
    assert len(task.train) + len(task.test) == n
    questions = {e["question"] for e in [*task.train, *task.test]}
    assert "" not in questions and "q?" not in questions


def test_a_directory_of_train_and_test_files_needs_no_split_keys(tmp_path):
    # dataset=jsonl as shipped: test_split null, test_size 100, more than the 10 train rows.
    folder = tmp_path / "mine"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", GSM8K_ROWS[:10])
    write_jsonl(folder / "test.jsonl", GSM8K_ROWS[10:13])
    cache = f"dataset.cache_dir={tmp_path / 'c'}"
    task = build_task(compose_config("dataset=jsonl", f"dataset.path={folder}", cache).dataset)
    assert [e["question"] for e in task.train] == [r["question"] for r in GSM8K_ROWS[:10]]
    assert [e["question"] for e in task.test] == [r["question"] for r in GSM8K_ROWS[10:13]]


def test_a_file_with_fewer_prompts_than_test_size_is_all_test(tmp_path):
    rows = GSM8K_ROWS[:12]
    path = write_jsonl(tmp_path / "dozen.jsonl", rows)
    task = build_task(hf_cfg(tmp_path, path, test_size=100))
    # Evaluation takes the whole file, in file order ...
    assert [e["question"] for e in task.test] == [r["question"] for r in rows]
    # ... training is refused in one line whose hint works when followed.
    with pytest.raises(UserError) as err:
        _ = task.train
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("dataset.test_size: holding out 100 prompts leaves none to train")
    assert "has 12 distinct prompts; set dataset.test_size below 12" in message
    task = build_task(hf_cfg(tmp_path, path, test_size=11))
    assert (len(task.train), len(task.test)) == (1, 11)


def test_eval_only_set_has_no_train_split(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", [{"problem": "1/2+0?", "answer": "\\frac{1}{2}"}] * 2)
    task = build_task(
        hf_cfg(tmp_path, folder, train_split=None, prompt_field="problem", test_split="test")
    )
    assert len(task.test) == 2
    with pytest.raises(UserError, match=r"dataset\.train_split: null"):
        _ = task.train


def test_hub_configs_load_a_local_copy_with_only_the_path_changed(tmp_path):
    gsm8k = tmp_path / "gsm8k"
    gsm8k.mkdir()
    write_jsonl(gsm8k / "train.jsonl", GSM8K_ROWS[:15])
    write_jsonl(gsm8k / "test.jsonl", GSM8K_ROWS[15:])
    math500 = tmp_path / "math500"
    math500.mkdir()
    write_jsonl(math500 / "test.jsonl", [{"problem": "Half of 1?", "answer": "\\frac{1}{2}"}])
    dapo = tmp_path / "dapo"
    dapo.mkdir()
    rows = [{**r, "data_source": "math_dapo"} for r in VERL_ROWS for _ in range(3)]
    datasets.Dataset.from_list(rows).to_parquet(str(dapo / "train.parquet"))
    cache = f"dataset.cache_dir={tmp_path / 'cache'}"

    cfg = compose_config(
        "dataset=gsm8k", f"dataset.path={gsm8k}", "dataset.config_name=null", cache
    )
    task = build_task(cfg.dataset)
    example = task.test[0]
    assert example["prompt"].startswith(example["question"] + "\nLet's think step by step")
    assert task.score(["#### " + example["answer"].split("#### ")[1]], [example]).correct == [True]

    task = build_task(compose_config("dataset=math500", f"dataset.path={math500}", cache).dataset)
    example = task.test[0]
    assert example["prompt"].endswith("put your final answer within \\boxed{}.")
    assert task.score(["\\boxed{0.5}"], [example]).correct == [True]

    cfg = compose_config("dataset=dapo_math", f"dataset.path={dapo}", "dataset.test_size=3", cache)
    task = build_task(cfg.dataset)
    assert len({e["question"] for e in task.test}) == 3
    assert len(task.train) == 3 * (len(VERL_ROWS) - 3)
    example = task.test[0]
    assert task.score([f"Answer: {example['answer']}"], [example]).correct == [True]


def test_jsonl_config_with_a_local_file(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", GSM8K_ROWS)
    cfg = compose_config(
        "dataset=jsonl",
        f"dataset.path={path}",
        "dataset.test_size=5",
        f"dataset.cache_dir={tmp_path / 'cache'}",
    )
    task = build_task(cfg.dataset)
    assert (len(task.train), len(task.test)) == (len(GSM8K_ROWS) - 5, 5)
    example = task.train[0]
    assert task.score(["#### " + example["answer"].split("#### ")[1]], [example]).correct == [True]


def test_a_split_of_only_bad_rows_is_empty_after_skipping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": None, "answer": "1"}] * 3)
    with pytest.raises(UserError, match=r"is empty after skipping 3 bad rows"):
        build_task(hf_cfg(tmp_path, path, skip_bad_rows=True))
