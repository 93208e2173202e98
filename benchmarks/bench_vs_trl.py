"""One GRPO rollout + K optimizer steps: our core (collect_rollout + policy_update) vs TRL's
GRPOTrainer, same model, prompts, shapes and loss, each system in its own process.

    python benchmarks/bench_vs_trl.py                         # tiny, then smollm2_135m if installed
    python benchmarks/bench_vs_trl.py --models tiny --reps 5 --rollouts 4
    python benchmarks/bench_vs_trl.py --out results.json      # also write every number
    python benchmarks/bench_vs_trl.py --models tiny_chain --prompts 32 --length 64  # chain shape
    python benchmarks/shape_model.py /tmp/qwen && python benchmarks/bench_vs_trl.py \
        --models qwen2_5_0_5b_shape --model-dir /tmp/qwen --device cuda --precision bf16 \
        --peak-tflops 989 --length 256        # a GPU, Qwen2.5-0.5B's shape (gpu_check.py)

Reference shape: N=16 prompts x G=8 completions of exactly L=32 tokens per rollout, K=4
minibatches, one optimizer step each, torch on 2 threads. Every completion runs to L in both
systems: the only declared EOS is a token the model never emits (benchlib.NEVER_EMITTED).

Matched: weights, tokenizer, prompts and their order, N, G, L, K, AdamW(lr, betas 0.9/0.99,
no weight decay, torch implementation), grad-norm clip 1.0, constant LR, temperature 1 with
no top-k/top-p, group-std advantages, the GRPO loss (per-token ratio, clip 0.2/0.28, mean
over each completion's tokens then over completions = TRL loss_type="grpo",
importance_sampling_level="token"), beta=0, one pass (num_iterations=1), old log-probs from
a no-grad forward before the first step (TRL does it for all K minibatches because
steps_per_generation=K > gradient_accumulation_steps=1; ours for minibatches 2..K, the first
one's training forward yields the same numbers; --old-logprobs sampler skips it), a reward
that is a plain Python function, no gradient checkpointing (TRL's GRPOConfig defaults to
it; --trl-checkpointing keeps it), the precision (--precision bf16: autocast in both,
eager attention on the CPU in both).
Not matched: TRL also computes the per-token entropy in every training forward and gathers
metrics every step; it samples with HF `generate` (our sampler is rollout.generate); its
advantage std eps is 1e-4 (ours 1e-6); the random streams differ, so the sampled text does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import benchlib
import torch

PHASES = ("generate", "score", "old_logprobs", "update")


class PhaseClock:
    """Seconds spent inside wrapped functions, summed per phase for the current rollout."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, fn, phase: str, when=lambda: True):
        def timed(*args, **kwargs):
            if not when():
                return fn(*args, **kwargs)
            benchlib.sync()  # on a GPU, queued work belongs to the phase before
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                benchlib.sync()
                self.seconds[phase] += time.perf_counter() - start

        return timed

    def take(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


def workload(args: argparse.Namespace) -> tuple[Any, Any, Any, list[dict[str, str]]]:
    """The composed config, model, tokenizer and prompts every worker uses."""
    precision = "bf16" if getattr(args, "precision", "fp32") == "bf16" else "none"
    device = getattr(args, "device", "cpu")
    cfg = benchlib.train_config(
        args.model,
        [
            *(["hardware=gpu"] if device == "cuda" else []),
            "algorithm=grpo",
            f"trainer.rollout_batch_size={args.prompts}",
            f"trainer.group_size={args.group}",
            f"trainer.minibatch_size={args.prompts // args.k}",
            f"dataset.max_completion_length={args.length}",
            f"hardware.num_threads={args.threads}",
            f"hardware.mixed_precision={precision}",
            f"trainer.old_logprobs={getattr(args, 'old_logprobs', 'recompute')}",
        ],
        getattr(args, "model_dir", None),
    )
    model, tokenizer = benchlib.load_model(cfg, args.model, args.threads, device)
    args.loaded_rss_mb = benchlib.current_rss_mb()  # before any rollout: weights + libraries
    n = args.prompts * (args.warmup + args.rollouts)
    examples = benchlib.task_prompts(args.model, n, args.length)
    return cfg, model, tokenizer, examples


def finish(
    args, model, rollouts: list[dict[str, float]], window: benchlib.Load, prompt_len: float
) -> dict[str, Any]:
    flops = benchlib.rollout_flops(
        model.config, args.prompts * args.group, round(prompt_len), args.length
    )
    return {
        "rollouts": rollouts[args.warmup :],
        "load": window.as_dict(),
        "peak_rss_mb": benchlib.peak_rss_mb(),
        "peak_gpu_memory_gib": benchlib.peak_gpu_memory_gib(),
        "loaded_rss_mb": args.loaded_rss_mb,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "prompt_tokens_mean": prompt_len,
        "flops": flops,
    }


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    from tic_grpo_cli.train import rollout as collect
    from tic_grpo_cli.train import update
    from tic_grpo_cli.train.policy import Policy, lr_lambda

    cfg, model, tokenizer, examples = workload(args)
    tr = cfg.trainer
    clock = PhaseClock()
    collect.generate = clock.wrap(collect.generate, "generate")
    update.batch_logprobs = clock.wrap(
        update.batch_logprobs, "old_logprobs", when=lambda: not torch.is_grad_enabled()
    )
    task = SimpleNamespace(score=score_examples)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay,
        betas=(tr.adam_beta1, tr.adam_beta2),
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tr))
    generator = torch.Generator().manual_seed(cfg.seed)

    rollouts, prompt_lens = [], []
    for r in range(args.warmup + args.rollouts):
        if r == args.warmup:
            start = benchlib.Snapshot.now()
        batch = examples[r * args.prompts : (r + 1) * args.prompts]
        before = benchlib.Snapshot.now()
        benchlib.sync()
        t0 = time.perf_counter()
        rollout = collect.collect_rollout(model, tokenizer, task, batch, cfg, generator)
        benchlib.sync()
        t1 = time.perf_counter()
        rows = update.policy_update(
            Policy(model, tokenizer, optimizer, scheduler), rollout, cfg, generator
        )
        benchlib.sync()
        t2 = time.perf_counter()
        assert len(rows) == args.k
        phases = defaultdict(float, clock.take())
        rollouts.append({
            "total": t2 - t0,
            "generate": phases["generate"],
            "score": t1 - t0 - phases["generate"],
            "old_logprobs": phases["old_logprobs"],
            "update": t2 - t1 - phases["old_logprobs"],
            "tokens": int(rollout.gen.completion_mask.sum()),
            "other_cores": before.until(benchlib.Snapshot.now()).other_cores,
        })  # fmt: skip
        prompt_lens.append(rollout.gen.prompt_mask.sum(-1).float().mean().item())
    return finish(
        args, model, rollouts, start.until(benchlib.Snapshot.now()), statistics.fmean(prompt_lens)
    )


def score_examples(texts: list[str], examples: list[dict[str, str]]) -> SimpleNamespace:
    rewards = [
        benchlib.prefix_reward(t, ex["answer"]) for t, ex in zip(texts, examples, strict=True)
    ]
    return SimpleNamespace(rewards=rewards, correct=[r > 0 for r in rewards], terms={})


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    cfg, model, tokenizer, examples = workload(args)
    tr = cfg.trainer

    def reward(prompts, completions, answer, **_) -> list[float]:
        return [benchlib.prefix_reward(c, a) for c, a in zip(completions, answer, strict=True)]

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"),
        use_cpu=getattr(args, "device", "cpu") == "cpu",
        bf16=getattr(args, "precision", "fp32") == "bf16",
        per_device_train_batch_size=args.prompts // args.k * args.group,
        gradient_accumulation_steps=1,
        steps_per_generation=args.k,
        num_generations=args.group,
        max_completion_length=args.length,
        num_iterations=1,
        beta=0.0,
        epsilon=alg_value(cfg, "epsilon_low"),
        epsilon_high=alg_value(cfg, "epsilon_high"),
        loss_type="grpo",
        importance_sampling_level="token",
        scale_rewards="group",
        temperature=tr.temperature,
        top_p=tr.top_p,
        top_k=tr.top_k,
        learning_rate=tr.lr,
        adam_beta1=tr.adam_beta1,
        adam_beta2=tr.adam_beta2,
        weight_decay=tr.weight_decay,
        max_grad_norm=tr.max_grad_norm,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        max_steps=(args.warmup + args.rollouts) * args.k,
        logging_steps=args.k,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        seed=cfg.seed,
        # TRL's GRPOConfig turns this on by default; our core does not checkpoint.
        gradient_checkpointing=args.trl_checkpointing,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
    )
    clock = PhaseClock()
    tokens: list[int] = []
    prompt_lens: list[float] = []
    score = trainer._generate_and_score_completions

    def generate_and_score(inputs):
        out = score(inputs)
        tokens.append(int(out["completion_mask"].sum()))
        prompt_lens.append(out["prompt_mask"].sum(-1).float().mean().item())
        return out

    trainer._generate_and_score_completions = clock.wrap(generate_and_score, "rollout")
    trainer._generate = clock.wrap(trainer._generate, "generate")
    trainer._get_per_token_logps_and_entropies = clock.wrap(
        trainer._get_per_token_logps_and_entropies,
        "old_logprobs",
        when=lambda: not torch.is_grad_enabled(),
    )
    rollouts: list[dict[str, float]] = []
    marks: dict[str, Any] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, _args, state, control, **kw):
            if state.global_step == 0:
                marks["last"] = time.perf_counter()
                marks["snap"] = benchlib.Snapshot.now()
            if state.global_step == args.warmup * args.k:
                marks["window"] = benchlib.Snapshot.now()

        def on_step_end(self, _args, state, control, **kw):
            if state.global_step % args.k:
                return
            benchlib.sync()
            now = time.perf_counter()
            # TRL skips the old-log-prob forward when K = 1 (the ratio is 1 by construction).
            phases = defaultdict(float, clock.take())
            rollout = phases.pop("rollout")
            rollouts.append({
                "total": now - marks["last"],
                "generate": phases["generate"],
                "score": rollout - phases["generate"] - phases["old_logprobs"],
                "old_logprobs": phases["old_logprobs"],
                "update": now - marks["last"] - rollout,
                "tokens": tokens[-1],
                "other_cores": marks["snap"].until(snap := benchlib.Snapshot.now()).other_cores,
            })  # fmt: skip
            marks["last"], marks["snap"] = now, snap

    trainer.add_callback(Timer())
    torch.set_num_threads(args.threads)  # in case anything above reset the pool
    trainer.train()
    window = marks["window"].until(benchlib.Snapshot.now())
    return finish(args, model, rollouts, window, statistics.fmean(prompt_lens))


def alg_value(cfg, key: str) -> float:
    return float(cfg.algorithm[key])


def worker_args(args: argparse.Namespace, system: str, model: str) -> list[str]:
    return [
        "--worker", system, "--models", model, "--prompts", str(args.prompts),
        "--group", str(args.group), "--length", str(args.length), "--k", str(args.k),
        "--threads", str(args.threads), "--rollouts", str(args.rollouts),
        "--warmup", str(args.warmup), "--precision", args.precision,
        "--old-logprobs", args.old_logprobs, "--device", args.device,
        *(["--model-dir", str(args.model_dir)] if args.model_dir else []),
        *(["--trl-checkpointing"] if args.trl_checkpointing else []),
    ]  # fmt: skip


def compare(args: argparse.Namespace, model: str, peak_flops: float) -> dict[str, Any]:
    """Alternate the two systems' worker processes, reps times, and summarise."""
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
    for rep in range(args.reps):
        order = ("ours", "trl") if rep % 2 == 0 else ("trl", "ours")
        for system in order:
            result, _ = benchlib.run_worker(Path(__file__), worker_args(args, system, model))
            runs[system].append(result)
            load = result["load"]
            times = [r["total"] for r in result["rollouts"]]
            print(
                f"  rep {rep} {system:4s}: rollout median {statistics.median(times):.3f} s, "
                f"peak RSS {result['peak_rss_mb']:.0f} MB, other processes "
                f"{load['other_cores']:.2f} cores",
                flush=True,
            )
    out: dict[str, Any] = {"model": model}
    for system, results in runs.items():
        every = [r for res in results for r in res["rollouts"]]
        # With one core taken by another process, 2 threads on 2 cores wait a scheduler
        # slice at every parallel op (measured: 20-50x slower): keep the quiet rollouts.
        rollouts = [r for r in every if r["other_cores"] <= args.quiet] or every
        totals = [r["total"] for r in rollouts]
        flops = results[0]["flops"]
        median = statistics.median(totals)
        gpu_peaks = [r["peak_gpu_memory_gib"] for r in results if r.get("peak_gpu_memory_gib")]
        out[system] = {
            "rollout_s": benchlib.summary(totals),
            "step_s": benchlib.summary([t / args.k for t in totals]),
            "phases_s": {p: statistics.median(r[p] for r in rollouts) for p in PHASES},
            "tokens_per_s": statistics.median(r["tokens"] / r["total"] for r in rollouts),
            "completion_tokens": statistics.median(r["tokens"] for r in rollouts),
            "peak_rss_mb": max(res["peak_rss_mb"] for res in results),
            "peak_gpu_memory_gib": max(gpu_peaks) if gpu_peaks else None,
            "prompt_tokens_mean": statistics.fmean(res["prompt_tokens_mean"] for res in results),
            "other_cores": statistics.fmean(res["load"]["other_cores"] for res in results),
            "other_cpu_s": sum(res["load"]["other_cpu_s"] for res in results),
            "measured_wall_s": sum(res["load"]["wall_s"] for res in results),
            "quiet_rollouts": f"{len(rollouts)}/{len(every)}" if rollouts is not every else "none",
            "other_cores_kept": statistics.fmean(r["other_cores"] for r in rollouts),
            "all_rollouts_median_s": statistics.median(r["total"] for r in every),
            "threads": results[0]["threads"],
            "params": results[0]["params"],
            "flops_per_rollout": flops,
            "utilisation": sum(flops.values()) / median / peak_flops,
        }
    out["speedup"] = out["trl"]["rollout_s"]["median"] / out["ours"]["rollout_s"]["median"]
    return out


def report(res: dict[str, Any], peak_flops: float) -> None:
    print(f"\n{res['model']}: {res['ours']['params'] / 1e6:.2f}M params")
    header = (
        "system  step s (med/min/max)     rollout s  gen    score  old-lp update  tok/s   "
        "RSS MB  util   other cores  quiet rollouts"
    )
    print(header)
    for system in ("ours", "trl"):
        r = res[system]
        s, p = r["step_s"], r["phases_s"]
        print(
            f"{system:6s}  {s['median']:.3f}/{s['min']:.3f}/{s['max']:.3f}  "
            f"{r['rollout_s']['median']:9.3f}  {p['generate']:.3f}  {p['score']:.3f}  "
            f"{p['old_logprobs']:.3f}  {p['update']:.3f}  {r['tokens_per_s']:6.0f}  "
            f"{r['peak_rss_mb']:6.0f}  {r['utilisation']:5.1%}  {r['other_cores_kept']:.2f}"
            f"         {r['quiet_rollouts']} (median of all: {r['all_rollouts_median_s']:.3f} s)"
        )
    if res["ours"].get("peak_gpu_memory_gib"):
        print("peak GPU memory GiB: " + ", ".join(
            f"{s} {res[s]['peak_gpu_memory_gib']:.2f}" for s in ("ours", "trl")))  # fmt: skip
    flops = res["ours"]["flops_per_rollout"]
    print(
        f"model GFLOP per rollout: generate {flops['generate'] / 1e9:.2f}, old log-probs "
        f"{flops['old_logprobs'] / 1e9:.2f}, update {flops['update'] / 1e9:.2f}; "
        f"peak {peak_flops / 1e9:.0f} GFLOP/s"
    )
    print(f"speed-up (TRL time / ours): {res['speedup']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,smollm2_135m")
    parser.add_argument("--prompts", type=int, default=16, help="N prompts per rollout")
    parser.add_argument("--group", type=int, default=8, help="G completions per prompt")
    parser.add_argument("--length", type=int, default=32, help="completion tokens")
    parser.add_argument("--k", type=int, default=4, help="minibatches = optimizer steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="worker processes per system")
    parser.add_argument("--rollouts", type=int, default=3, help="measured rollouts per worker")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rollouts per worker")
    parser.add_argument(
        "--trl-checkpointing",
        action="store_true",
        help="keep TRL's default gradient_checkpointing=True (off by default to match ours)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: autocast over float32 weights in both systems (TRL bf16=True; on the CPU "
        "both get eager attention, as `tic-grpo train` does)",
    )
    parser.add_argument(
        "--old-logprobs",
        choices=("recompute", "sampler"),
        default="recompute",
        help="ours only: trainer.old_logprobs (sampler skips the old-log-prob forward)",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.25,
        help="keep rollouts during which other processes used at most this many cores",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: both systems on the GPU (ours with hardware=gpu, TRL without use_cpu)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="where a directory model (qwen2_5_0_5b_shape: benchmarks/shape_model.py) lives",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the utilisation's peak (e.g. 989, an H100's dense bf16); default: measured fp32 "
        "torch.mm on the CPU",
    )
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    parser.add_argument("--worker", choices=("ours", "trl"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        args.model = args.models
        result = run_ours(args) if args.worker == "ours" else run_trl(args)
        print(json.dumps(result))
        return

    torch.set_num_threads(args.threads)
    info = benchlib.machine()
    print(f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}")
    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
        print(f"peak for utilisation: {args.peak_tflops:g} TFLOP/s (given); device {args.device}")
    else:
        peak, load = benchlib.matmul_flops()
        print(
            f"fp32 torch.mm 2048^2 on {args.threads} threads: {peak / 1e9:.0f} GFLOP/s "
            f"(other processes {load.other_cores:.2f} cores)"
        )
    print(f"precision {args.precision}; ours trainer.old_logprobs={args.old_logprobs}")
    print(
        f"shape: {args.prompts} prompts x {args.group} completions x {args.length} tokens, "
        f"K={args.k}; {args.reps} reps x ({args.warmup} warm-up + {args.rollouts}) rollouts"
    )
    results = {"machine": info, "peak_flops": peak, "args": vars(args) | {"out": str(args.out)}}
    for model in args.models.split(","):
        missing = benchlib.model_available(model, args.model_dir)
        if missing:
            print(f"\n{model}: skipped, {missing}")
            continue
        print(f"\n{model}:", flush=True)
        results[model] = compare(args, model, peak)
        report(results[model], peak)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))  # paths in args


if __name__ == "__main__":
    main()
