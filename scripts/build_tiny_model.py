"""Build the embedded `tiny` model: a character-level Llama, warmed up on arithmetic, stopped early.

    python scripts/build_tiny_model.py                    # writes tic_grpo_cli/assets/tiny/
    python scripts/build_tiny_model.py --save-candidates  # also outputs/tiny_candidates/acc_XX/

The model is meant to be *partly* trained: supervised warm-up on the arithmetic task's own
train split lifts greedy accuracy from ~0% to >80% in about a thousand steps, so the build
stops at the first evaluation whose accuracy on a held-out validation slice (train-split
problems never trained on) reaches ``--ship-target``. The test split is never used to choose a
checkpoint; it is only measured and recorded in build_info.json. The same seed, threads and
versions give the same weights (deterministic CPU kernels, one thread by default).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tic_grpo_cli.data.arithmetic import Problem, generate
from tic_grpo_cli.sampling import generate as rollout_generate

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DIR = ROOT / "tic_grpo_cli" / "assets" / "tiny"
CANDIDATES_DIR = ROOT / "outputs" / "tiny_candidates"
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# The default eval split of `dataset=arithmetic`; recorded, never used for choosing.
EVAL_SPLIT = {"split": "test", "size": 500, "seed": 0}
MAX_NEW_TOKENS = 8  # dataset.max_completion_length


@dataclass
class Arch:
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character; BOS is prepended, EOS is not (the model emits it)."""
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {token: i for i, token in enumerate(SPECIALS + chars)}
    # BPE without merges is a character-level model that maps anything else to <unk>.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(SPECIALS)
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=Arch.max_position_embeddings,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, arch: Arch) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **asdict(arch),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def encode(tokenizer, problems: list[Problem]) -> tuple[torch.Tensor, ...]:
    """``<bos> prompt answer <eos>``, right-padded; the loss covers answer and EOS only."""
    rows = [
        (
            tokenizer(p.question)["input_ids"],
            tokenizer(p.answer, add_special_tokens=False)["input_ids"],
        )
        for p in problems
    ]
    width = max(len(q) + len(a) + 1 for q, a in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (q, a) in enumerate(rows):
        seq = q + a + [tokenizer.eos_token_id]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(q) : len(seq)] = torch.tensor([*a, tokenizer.eos_token_id])
    return ids, mask, labels


def correct(
    model,
    tokenizer,
    problems: list[Problem],
    temperature: float = 0.0,
    samples: int = 1,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> torch.Tensor:
    """[problems, samples] bool: the completion is the exact answer, then EOS.

    Uses the project's sampler (left-padded batch, KV cache) so the figure is what `train`
    and `eval` see.
    """
    prompts = [p.question for p in problems for _ in range(samples)]
    answers = [p.answer for p in problems for _ in range(samples)]
    generator = torch.Generator().manual_seed(0)
    gen = rollout_generate(
        model, tokenizer, prompts, max_new_tokens, temperature=temperature, generator=generator
    )
    flags = [
        done and text == answer
        for text, answer, done in zip(gen.texts, answers, gen.finished.tolist(), strict=True)
    ]
    return torch.tensor(flags).view(len(problems), samples)


def accuracy(model, tokenizer, problems: list[Problem]) -> float:
    """Greedy accuracy."""
    return round(correct(model, tokenizer, problems).float().mean().item(), 4)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save(model, tokenizer, out: Path, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # transformers 5 writes its own class name; the portable one loads under 4.x too.
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tok_config, indent=2) + "\n")
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=SHIPPED_DIR, help="where the shipped model goes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=3000, help="give up after this many steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-size", type=int, default=7600)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--ship-target", type=float, default=0.30, help="validation accuracy to stop at")
    p.add_argument("--save-candidates", action="store_true", help="save one checkpoint per target")
    p.add_argument("--candidates-dir", type=Path, default=CANDIDATES_DIR)
    p.add_argument("--candidate-targets", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    p.add_argument("--samples", type=int, default=8, help="samples per prompt at temperature 1")
    p.add_argument("--eval-size", type=int, default=EVAL_SPLIT["size"], help="test problems scored")
    p.add_argument("--threads", type=int, default=1, help="fixed for reproducible weights")
    return p.parse_args(argv)


def sft_steps(model, tokenizer, train: list, args: argparse.Namespace):
    """Supervised warm-up on shuffled batches of ``train`` (reshuffled each epoch from
    ``args.seed``): yields ``(step, loss)`` after each AdamW step, up to ``args.max_steps``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98))
    order = torch.Generator().manual_seed(args.seed)
    perm, cursor = torch.randperm(len(train), generator=order), 0
    for step in range(1, args.max_steps + 1):
        if cursor + args.batch_size > len(train):
            perm, cursor = torch.randperm(len(train), generator=order), 0
        batch = [train[i] for i in perm[cursor : cursor + args.batch_size].tolist()]
        cursor += args.batch_size
        ids, mask, labels = encode(tokenizer, batch)
        model.train()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        yield step, loss


def train_until(model, tokenizer, train, val, targets, args, started: float) -> tuple[dict, int]:
    """Warm up until validation accuracy reaches every target; snapshot the first eval at each.

    Returns ``{target: {"step", "val", "seconds", "state"}}`` and the last step run. A target
    never reached is missing from the dict.
    """
    snapshots: dict[float, dict] = {}
    for step, loss in sft_steps(model, tokenizer, train, args):
        if step % args.eval_every and step != args.max_steps:
            continue
        val_acc = accuracy(model, tokenizer, val)
        print(f"step {step:5d}  loss {loss.item():.4f}  val greedy {val_acc:.3f}", flush=True)
        for target in targets:
            if val_acc >= target and target not in snapshots:
                snapshots[target] = {
                    "step": step,
                    "val": val_acc,
                    "seconds": time.perf_counter() - started,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                }
        if len(snapshots) == len(targets):
            break
    return snapshots, step


def evaluate(model, tokenizer, test: list[Problem], samples: int) -> dict:
    """The recorded figures: greedy on the eval split (and its first 100), sampled at T=1."""
    sampled = correct(model, tokenizer, test, temperature=1.0, samples=samples)
    return {
        "greedy": accuracy(model, tokenizer, test),
        "greedy_first100": accuracy(model, tokenizer, test[:100]),
        # Mean over all samples, and the share of prompts with at least one right: a GRPO
        # group of this size only teaches something when it holds a correct sample.
        f"sampled_t1_x{samples}": round(sampled.float().mean().item(), 4),
        f"pass_at_{samples}_t1": round(sampled.any(-1).float().mean().item(), 4),
    }


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Build; returns ``{saved directory: its figures}``."""
    args = parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    pool = generate("train", args.train_size + args.val_size, seed=args.seed)
    train, val = pool[: args.train_size], pool[args.train_size :]
    test = generate(EVAL_SPLIT["split"], EVAL_SPLIT["size"], seed=EVAL_SPLIT["seed"])
    test = test[: args.eval_size]
    arch = Arch()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, arch)
    targets = sorted({args.ship_target, *(args.candidate_targets if args.save_candidates else [])})

    snapshots, last_step = train_until(model, tokenizer, train, val, targets, args, started)
    if args.ship_target not in snapshots:
        print(
            f"warning: validation accuracy never reached {args.ship_target}; shipping step {last_step}"
        )
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seconds = time.perf_counter() - started
        snapshots[args.ship_target] = {
            "step": last_step,
            "val": None,
            "seconds": seconds,
            "state": state,
        }

    common = {
        "seed": args.seed,
        "arch": asdict(arch),
        "vocab_size": len(tokenizer),
        "parameters": parameter_count(model),
        "train": {
            "data": f"arithmetic.generate('train', {len(pool)}, seed={args.seed}): the first "
            f"{args.train_size} are trained on, the last {args.val_size} choose the checkpoint",
            "batch_size": args.batch_size,
            "lr": args.lr,
            "optimizer": "AdamW(betas=(0.9, 0.98), weight_decay=0.01), constant lr",
            "threads": args.threads,
            "eval_every": args.eval_every,
        },
        "selection": "the first evaluation whose greedy accuracy on the validation slice "
        "reached the target; the eval split is measured, never used for choosing",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    eval_split = {**EVAL_SPLIT, "size": len(test), "max_new_tokens": MAX_NEW_TOKENS}
    results = {}
    for target, snap in snapshots.items():
        model.load_state_dict(snap["state"])
        figures = evaluate(model, tokenizer, test, args.samples)
        info = {
            **common,
            "target": target,
            "steps": snap["step"],
            "val_greedy": snap["val"],
            "eval": {**eval_split, **figures},
            # Seed to snapshot: training and the validation evals on the way.
            "train_seconds": round(snap["seconds"], 1),
        }
        dirs = [args.out] if target == args.ship_target else []
        if args.save_candidates and target in args.candidate_targets:
            dirs.append(args.candidates_dir / f"acc_{round(target * 100):02d}")
        for out in dirs:
            if out.exists():
                shutil.rmtree(out)
            save(model, tokenizer, out, info)
            results[str(out)] = {"steps": snap["step"], "val_greedy": snap["val"], **figures}
            print(f"saved {out}: {results[str(out)]}", flush=True)
    print(f"build time {time.perf_counter() - started:.1f}s ({args.threads} thread(s))")
    return results


if __name__ == "__main__":
    main()
