"""Where one of our RL steps spends its time: torch.profiler operator totals per phase, and
cProfile's top Python functions (what the operators do not show: HF mask building, module
call overhead, the sampler's host syncs).

    python benchmarks/bench_profile.py                       # tiny, reference shape
    python benchmarks/bench_profile.py --model smollm2_135m --rows 15
    python benchmarks/bench_profile.py --model qwen2_5_0_5b_shape --model-dir /tmp/qwen \
        --device cuda --precision bf16 --length 128 --json     # a GPU (scripts/gpu_check.py)

Runs collect_rollout + policy_update (algorithm=grpo) on the bench_vs_trl workload after one
warm-up rollout; prints the other processes' CPU use during the profiled rollout. On a GPU
the operator table is sorted by the time kernels ran on the device, and `--json` ends the
output with one line: the top operators' share of device (or CPU) time and the wall time of
each phase.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from types import SimpleNamespace

import benchlib
import torch
from bench_vs_trl import score_examples, workload
from torch.profiler import ProfilerActivity, profile, record_function


def one_rollout(state: dict, batch) -> dict[str, float]:
    """One rollout and its update; the wall seconds of each (device work included)."""
    from tic_grpo_cli.train.policy import Policy
    from tic_grpo_cli.train.rollout import collect_rollout
    from tic_grpo_cli.train.update import policy_update

    cfg, model, tokenizer, gen = state["cfg"], state["model"], state["tokenizer"], state["gen"]
    benchlib.sync()
    t0 = time.perf_counter()
    with record_function("collect_rollout"):
        rollout = collect_rollout(model, tokenizer, state["task"], batch, cfg, gen)
        benchlib.sync()
    t1 = time.perf_counter()
    with record_function("policy_update"):
        policy = Policy(model, tokenizer, state["optimizer"], state["scheduler"])
        policy_update(policy, rollout, cfg, gen)
        benchlib.sync()
    return {"collect_rollout": t1 - t0, "policy_update": time.perf_counter() - t1}


def top_operators(events, device: bool, rows: int) -> list[dict[str, float | str]]:
    """The operators with the most self time (on the device, else on the CPU), each with its
    share of the total; profiler ranges (record_function) are left out."""

    def own(event) -> float:  # microseconds
        return event.self_device_time_total if device else event.self_cpu_time_total

    ops = [e for e in events if e.key not in ("collect_rollout", "policy_update")]
    total = sum(own(e) for e in ops) or 1.0
    ops.sort(key=own, reverse=True)
    return [
        {"op": e.key, "self_ms": own(e) / 1000, "share": own(e) / total, "calls": e.count}
        for e in ops[:rows]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25, help="table rows to print")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model-dir", help="for qwen2_5_0_5b_shape (benchmarks/shape_model.py)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--json", action="store_true", help="end with a one-line JSON summary")
    args = parser.parse_args()
    args.warmup, args.rollouts = 1, 2
    on_gpu = args.device == "cuda"

    from tic_grpo_cli.train.policy import lr_lambda

    cfg, model, tokenizer, examples = workload(args)
    tr = cfg.trainer
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tr.lr, betas=(tr.adam_beta1, tr.adam_beta2), weight_decay=0.0
    )
    state = {
        "cfg": cfg,
        "model": model,
        "tokenizer": tokenizer,
        "gen": torch.Generator().manual_seed(0),  # seeds the device's noise (sampling.py)
        "task": SimpleNamespace(score=score_examples),
        "optimizer": optimizer,
        "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tr)),
    }
    batches = [examples[i * args.prompts : (i + 1) * args.prompts] for i in range(3)]
    one_rollout(state, batches[0])  # warm-up

    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    with benchlib.LoadMeter() as meter, profile(activities=activities) as prof:
        phases = one_rollout(state, batches[1])
    print(
        f"torch.profiler, one rollout ({meter.load.wall_s:.3f} s wall incl. profiler overhead; "
        f"other processes {meter.load.other_cores:.2f} cores)"
    )
    events = prof.key_averages()
    sort = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=args.rows))

    profiler = cProfile.Profile()
    with benchlib.LoadMeter() as meter:
        profiler.runcall(one_rollout, state, batches[2])
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.rows)
    print(
        f"cProfile, one rollout ({meter.load.wall_s:.3f} s wall; other processes "
        f"{meter.load.other_cores:.2f} cores), by own time:"
    )
    print(out.getvalue())
    if args.json:
        summary = {
            "device": args.device,
            "phases_wall_s": phases,
            "profiled_wall_s": meter.load.wall_s,
            "peak_gpu_memory_gib": benchlib.peak_gpu_memory_gib(),
            "top_operators": top_operators(events, on_gpu, args.rows),
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
