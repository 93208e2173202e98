"""How our rollout (generation) and update (old log-probs + K optimizer steps) time and memory
grow with completion length and group size, with the log-log growth exponent of each.

    python benchmarks/bench_scaling.py            # lengths 16..256 at G=8, groups 4..64 at L=32
    python benchmarks/bench_scaling.py --quick    # 3 points per sweep, one measured rollout

Every point runs in a fresh process (bench_vs_trl's worker: collect_rollout + policy_update,
algorithm=grpo, N=16 prompts, K=4, completions pinned to full length), so its peak RSS is its
own. 'activation MB' is peak RSS minus RSS after loading the model: KV cache, activations,
optimizer state. An exponent of 1 is linear growth; generation cost per token grows with the
context, so its length exponent may exceed 1; small batches leave cores idle, so group
exponents below 1 mean per-row overhead is being amortised.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import benchlib
import torch

WORKER = Path(__file__).resolve().parent / "bench_vs_trl.py"


def measure(args: argparse.Namespace, length: int, group: int) -> dict[str, Any]:
    argv = [
        "--worker", "ours", "--models", args.model, "--prompts", str(args.prompts),
        "--group", str(group), "--length", str(length), "--k", str(args.k),
        "--threads", str(args.threads), "--rollouts", str(args.rollouts), "--warmup", "1",
    ]  # fmt: skip
    result, _ = benchlib.run_worker(WORKER, argv)
    rollouts = result["rollouts"]
    point = {
        "length": length,
        "group": group,
        "generate_s": statistics.median(r["generate"] for r in rollouts),
        "update_s": statistics.median(r["old_logprobs"] + r["update"] for r in rollouts),
        "tokens": statistics.median(r["tokens"] for r in rollouts),
        "peak_rss_mb": result["peak_rss_mb"],
        "activation_mb": result["peak_rss_mb"] - result["loaded_rss_mb"],
        "other_cores": result["load"]["other_cores"],
    }
    print(
        f"  L={length:4d} G={group:3d}: generate {point['generate_s']:7.3f} s  update "
        f"{point['update_s']:7.3f} s  peak RSS {point['peak_rss_mb']:6.0f} MB "
        f"(+{point['activation_mb']:5.0f})  other processes {point['other_cores']:.2f} cores",
        flush=True,
    )
    return point


def sweep(args: argparse.Namespace, name: str, values: list[int]) -> dict[str, Any]:
    print(f"{name} sweep:")
    points = [
        measure(args, v, args.group) if name == "length" else measure(args, args.length, v)
        for v in values
    ]
    fits = {
        key: benchlib.loglog_slope(values, [p[key] for p in points])
        for key in ("generate_s", "update_s", "activation_mb")
        if all(p[key] > 0 for p in points)
    }
    print("  exponents: " + ", ".join(f"{k} ~ {name}^{v:.2f}" for k, v in fits.items()))
    return {"points": points, "exponents": fits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8, help="G during the length sweep")
    parser.add_argument("--length", type=int, default=32, help="L during the group sweep")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=2, help="measured rollouts per point")
    parser.add_argument("--quick", action="store_true", help="3 points per sweep, 1 rollout")
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    args = parser.parse_args()
    lengths, groups = [16, 32, 64, 128, 256], [4, 8, 16, 32, 64]
    if args.quick:
        lengths, groups, args.rollouts = [16, 64, 256], [4, 16, 64], 1

    torch.set_num_threads(args.threads)
    info = benchlib.machine()
    print(f"{info['cpu']}, {info['cores']} cores, {args.threads} threads, {info['date']}")
    print(f"{args.model}: N={args.prompts} prompts, K={args.k}; medians of {args.rollouts}")
    with benchlib.LoadMeter() as meter:
        results = {
            "machine": info,
            "length": sweep(args, "length", lengths),
            "group": sweep(args, "group", groups),
        }
    results["load"] = meter.load.as_dict()
    print(f"total {meter.load.wall_s:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
