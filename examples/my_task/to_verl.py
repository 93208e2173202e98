"""Write the example task in verl's parquet schema, to try the loader on verl data:

    python examples/my_task/to_verl.py outputs/my_task_verl

Each row: data_source (picks the scorer under scorer=auto), prompt (chat messages),
ability, reward_model {style, ground_truth} (the reference answer) and extra_info.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets

HERE = Path(__file__).parent


def verl_rows(split: str) -> list[dict]:
    rows = [json.loads(line) for line in (HERE / f"{split}.jsonl").read_text().splitlines()]
    return [
        {
            "data_source": "my_task",
            "prompt": [{"role": "user", "content": row["problem"]}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(row["solution"])},
            "extra_info": {"split": split, "index": i},
        }
        for i, row in enumerate(rows)
    ]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/my_task/to_verl.py OUT_DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    datasets.disable_progress_bars()
    for split in ("train", "test"):
        datasets.Dataset.from_list(verl_rows(split)).to_parquet(str(out / f"{split}.parquet"))
        print(f"wrote {out / f'{split}.parquet'}")
