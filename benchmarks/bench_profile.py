"""Where one of our RL steps spends its time: torch.profiler operator totals per phase, and
cProfile's top Python functions (what the operators do not show: HF mask building, module
call overhead, the sampler's host syncs).

    python benchmarks/bench_profile.py                       # tiny, reference shape
    python benchmarks/bench_profile.py --model smollm2_135m --rows 15

Runs collect_rollout + policy_update (algorithm=grpo) on the bench_vs_trl workload after one
warm-up rollout; prints the other processes' CPU use during the profiled rollout.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from types import SimpleNamespace

import benchlib
import torch
from bench_vs_trl import score_examples, workload
from torch.profiler import ProfilerActivity, profile, record_function


def one_rollout(state: dict, batch) -> None:
    from tic_grpo_cli.train.policy import Policy
    from tic_grpo_cli.train.rollout import collect_rollout
    from tic_grpo_cli.train.update import policy_update

    cfg, model, tokenizer, gen = state["cfg"], state["model"], state["tokenizer"], state["gen"]
    with record_function("collect_rollout"):
        rollout = collect_rollout(model, tokenizer, state["task"], batch, cfg, gen)
    with record_function("policy_update"):
        policy = Policy(model, tokenizer, state["optimizer"], state["scheduler"])
        policy_update(policy, rollout, cfg, gen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25, help="table rows to print")
    args = parser.parse_args()
    args.warmup, args.rollouts = 1, 2

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
        "gen": torch.Generator().manual_seed(0),
        "task": SimpleNamespace(score=score_examples),
        "optimizer": optimizer,
        "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tr)),
    }
    batches = [examples[i * args.prompts : (i + 1) * args.prompts] for i in range(3)]
    one_rollout(state, batches[0])  # warm-up

    with benchlib.LoadMeter() as meter, profile(activities=[ProfilerActivity.CPU]) as prof:
        one_rollout(state, batches[1])
    print(
        f"torch.profiler, one rollout ({meter.load.wall_s:.3f} s wall incl. profiler overhead; "
        f"other processes {meter.load.other_cores:.2f} cores)"
    )
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))

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


if __name__ == "__main__":
    main()
