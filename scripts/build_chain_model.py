"""Build the embedded `tiny_chain` model: the tiny Llama, warmed up on the `chain` task.

    python scripts/build_chain_model.py              # writes tic_grpo_cli/assets/tiny_chain/

Same architecture and character-level tokenizer as the `tiny` model (scripts/build_tiny_model.py),
trained from scratch on chains of 1-8 steps drawn from the task's train split. The build stops
at the first evaluation whose greedy accuracy on the *validation* split of 4-step chains (the
`dataset=chain` default) reaches ``--ship-target``; the test split is only measured afterwards
and recorded in build_info.json, for both chain lengths the study uses (4 and 8). One thread and
deterministic kernels: the same seed and versions give the same weights.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from build_tiny_model import Arch, build_model, build_tokenizer, save, sft_steps
from build_tiny_model import correct as tiny_correct

from tic_grpo_cli.data.chain import ChainProblem, generate, max_completion_tokens
from tic_grpo_cli.sampling import generate as rollout_generate

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DIR = ROOT / "tic_grpo_cli" / "assets" / "tiny_chain"
LENGTHS = (4, 8)  # the study's short and long chains; the first chooses the checkpoint


def correct(
    model, tokenizer, problems: list[ChainProblem], temperature: float = 0.0, samples: int = 1
) -> torch.Tensor:
    """[problems, samples] bool: the completion is the whole worked chain, then EOS."""
    max_new = max_completion_tokens(len(problems[0].steps))
    return tiny_correct(model, tokenizer, problems, temperature, samples, max_new)


def greedy(model, tokenizer, problems: list[ChainProblem]) -> float:
    return round(correct(model, tokenizer, problems).float().mean().item(), 4)


def greedy_lengths(model, tokenizer, problems: list[ChainProblem]) -> float:
    """Mean completion length in tokens (with EOS) of the greedy completions."""
    max_new = max_completion_tokens(len(problems[0].steps))
    gen = rollout_generate(
        model, tokenizer, [p.question for p in problems], max_new, temperature=0.0
    )
    return round(gen.completion_mask.sum(-1).float().mean().item(), 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=SHIPPED_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=6000, help="give up after this many steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-per-length", type=int, default=4000, help="problems per chain length")
    p.add_argument("--min-length", type=int, default=2, help="chains of this many steps or more")
    p.add_argument("--max-length", type=int, default=8, help="chains of this many steps or fewer")
    p.add_argument("--val-size", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument(
        "--ship-target",
        type=float,
        default=0.30,
        help="greedy validation accuracy on 4-step chains to stop at",
    )
    p.add_argument("--eval-size", type=int, default=500, help="test problems per chain length")
    p.add_argument("--samples", type=int, default=8, help="samples per prompt at temperature 1")
    p.add_argument("--threads", type=int, default=1, help="fixed for reproducible weights")
    return p.parse_args(argv)


def warm_up(
    model, tokenizer, train: list[ChainProblem], val: list[ChainProblem], args: argparse.Namespace
) -> tuple[int, float | None]:
    """Supervised steps until the validation target; returns (step, validation accuracy)."""
    for step, loss in sft_steps(model, tokenizer, train, args):
        if step % args.eval_every:
            continue
        val_acc = greedy(model, tokenizer, val)
        print(
            f"step {step:5d}  loss {loss.item():.4f}  val greedy (4 steps) {val_acc:.3f}",
            flush=True,
        )
        if val_acc >= args.ship_target:
            return step, val_acc
    print(f"warning: validation accuracy never reached {args.ship_target}; shipping the last step")
    return args.max_steps, None


def main(argv: list[str] | None = None) -> dict:
    """Build and save; returns the recorded figures."""
    args = parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    train = [
        p
        for k in range(args.min_length, args.max_length + 1)
        for p in generate("train", args.train_per_length, seed=args.seed, chain_length=k)
    ]
    val = generate("validation", args.val_size, seed=args.seed, chain_length=LENGTHS[0])
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, Arch())
    step, val_acc = warm_up(model, tokenizer, train, val, args)
    train_seconds = round(time.perf_counter() - started, 1)

    figures = {}
    for k in LENGTHS:
        test = generate("test", args.eval_size, seed=0, chain_length=k)
        sampled = correct(model, tokenizer, test, temperature=1.0, samples=args.samples)
        figures[f"chain_length_{k}"] = {
            "greedy": greedy(model, tokenizer, test),
            "greedy_mean_tokens": greedy_lengths(model, tokenizer, test),
            f"sampled_t1_x{args.samples}": round(sampled.float().mean().item(), 4),
            f"pass_at_{args.samples}_t1": round(sampled.any(-1).float().mean().item(), 4),
        }
    info = {
        "seed": args.seed,
        "arch": asdict(Arch()),
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train": {
            "data": f"chain.generate('train', {args.train_per_length}, seed={args.seed}, "
            f"chain_length=k) for k in {args.min_length}..{args.max_length}",
            "batch_size": args.batch_size,
            "lr": args.lr,
            "optimizer": "AdamW(betas=(0.9, 0.98), weight_decay=0.01), constant lr",
            "threads": args.threads,
            "eval_every": args.eval_every,
        },
        "selection": f"the first evaluation whose greedy accuracy on chain.generate('validation', "
        f"{args.val_size}, seed={args.seed}, chain_length=4) reached {args.ship_target}; the "
        "test split is measured, never used for choosing",
        "steps": step,
        "val_greedy": val_acc,
        "eval": {"split": "test", "size": args.eval_size, "seed": 0, **figures},
        "train_seconds": train_seconds,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    save(model, tokenizer, args.out, info)
    print(json.dumps(figures, indent=2))
    print(f"saved {args.out}; build time {time.perf_counter() - started:.1f}s")
    return info


if __name__ == "__main__":
    main()
