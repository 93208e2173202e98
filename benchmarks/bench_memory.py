"""Peak memory of one training step against batch, completion length and vocabulary.

    python benchmarks/bench_memory.py                                 # the grid below, 2 modes
    python benchmarks/bench_memory.py --batch 16 --length 150 --vocab 49152 --logprobs full
    python benchmarks/bench_memory.py --load smollm2 --batch 16 --length 150

Each point runs in a fresh worker process (ru_maxrss is a process's peak, so points must not
share one) on a randomly initialised Llama of SmolLM2-135M's shape (30 layers, hidden 576,
tied embeddings; `--vocab` sets V) in float32, as `tic-grpo train` holds it on a CPU, or with
`--load smollm2` the real model through the trainer's loader (GGUF de-quantised). The worker
does what `train/update.py` does to one micro-batch of `--batch` completions of `--length`
tokens after a `--prompt`-token prompt: a no-grad log-prob pass (pi_old), then two optimizer
steps (forward, backward, AdamW step; the second one is the steady state, the moments
exist), and reports its RSS after each phase and the peak so far:

    load       the model (and, with --load smollm2, the GGUF loader's own copies)
    old        the no-grad pass: logits [B, L+1, V] and the log-prob temporaries
    forward    activations of 30 layers for B x (P + L) tokens, plus the logits
    backward   gradients (one more copy of the weights) while activations are freed
    step       AdamW's two moments (two more copies), allocated at the first step

`--logprobs full` computes the sampled tokens' log-probs through the whole [B, L, V] tensor
at once, as the trainer did before tic_grpo_cli/logprobs.py; `chunked` is the trainer now.
Peak RSS does not depend on the machine's load; the load is reported all the same.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from benchlib import current_rss_mb, machine, peak_rss_mb, run_worker

SMOLLM2_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_model(load: str, vocab: int, checkpointing: bool) -> Any:
    """The model in training mode; activation checkpointing as `checkpointing` says,
    whatever the model preset's default (which differs between versions of the code)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if load == "smollm2":
        from benchlib import train_config

        from tic_grpo_cli.models import load_model_and_tokenizer

        cfg = train_config("smollm2_135m", [f"model.gradient_checkpointing={checkpointing}"])
        model, _ = load_model_and_tokenizer(cfg.model, torch.device("cpu"), torch.float32)
        return model
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, **SMOLLM2_SHAPE)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).train()
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    return model


def code_version() -> str:
    """The commit of the tic_grpo_cli this process imported (PYTHONPATH may point elsewhere
    than this script's checkout), with '+' when its tree has changes."""
    import subprocess

    import tic_grpo_cli

    where = Path(tic_grpo_cli.__file__).parent
    git = ["git", "-C", str(where)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "."], capture_output=True, text=True)
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "") or "unknown"


def set_malloc(mode: str) -> str:
    """`trainer`: what `tic-grpo train` does to glibc's malloc (runtime/memory.py), when the
    code has it; `default`: glibc's own dynamic thresholds. Returns what applies."""
    import tic_grpo_cli

    if mode == "default":
        return "default"
    try:
        from tic_grpo_cli.runtime import memory
    except ImportError:  # older code: the trainer left malloc alone
        return "default"
    if Path(tic_grpo_cli.__file__).parent not in Path(memory.__file__).parents:
        return "default"  # found in another checkout by an editable install (see worker)
    return "trainer" if memory.return_freed_memory() else "default"


def record(numbers: dict[str, Any], step: int, new: Any, loss: Any, model: Any) -> None:
    """Keep what --dump compares between two versions of the code: each step's log-probs
    (the second after one AdamW step), loss and gradient norm (whole-batch micro only)."""
    import torch

    grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    numbers[f"logprobs{step}"] = new.detach().clone()
    numbers[f"loss{step}"] = loss.item()
    numbers[f"grad_norm{step}"] = torch.linalg.vector_norm(torch.stack(grads)).item()


def logprobs_mode(mode: str) -> str:
    """Set the log-prob path of `--logprobs` up; returns what the imported code runs."""
    import tic_grpo_cli

    try:
        from tic_grpo_cli import logprobs
    except ImportError:
        return "old code"
    if Path(logprobs.__file__).parent != Path(tic_grpo_cli.__file__).parent:
        # Code older than logprobs.py (PYTHONPATH=<an old checkout>): an editable install
        # still finds the module in its own checkout, but the old code never calls it.
        return "old code"
    if mode == "full":
        logprobs.CHUNK_ELEMENTS = 2**62  # one slice: the plain formula, as before
    return mode


def random_batch(rows: int, prompt: int, length: int, vocab: int) -> tuple[Any, ...]:
    """Seeded prompt and completion ids with all-true masks, as `completion_logprobs`
    takes them: ([rows, prompt], [rows, prompt], [rows, length], [rows, length])."""
    import torch

    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(vocab, (rows, prompt), generator=g)
    completion_ids = torch.randint(vocab, (rows, length), generator=g)
    ones = torch.ones(rows, prompt + length, dtype=torch.bool)
    return prompt_ids, ones[:, :prompt], completion_ids, ones[:, prompt:]


def worker(point: dict[str, Any]) -> dict[str, Any]:
    """One measurement: RSS after each phase of two micro-batch updates (see the docstring)."""
    import torch

    from tic_grpo_cli.logprobs import completion_logprobs

    torch.set_num_threads(point["threads"])
    point = {**point, "logprobs": logprobs_mode(point["logprobs"])}
    point["malloc"] = set_malloc(point["malloc"])
    phases: dict[str, dict[str, float]] = {}

    def mark(name: str) -> None:
        phases[name] = {"rss_mb": current_rss_mb(), "peak_mb": peak_rss_mb()}

    mark("start")
    model = build_model(point["load"], point["vocab"], point["checkpointing"])
    vocab = model.config.vocab_size
    mark("load")
    rows, clen, micro = point["batch"], point["length"], point["micro"] or point["batch"]
    batch = random_batch(rows, point["prompt"], clen, vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    temperature = point["temperature"]
    with torch.no_grad():
        old = completion_logprobs(model, *batch, micro_batch_size=micro, temperature=temperature)
    mark("old")
    numbers: dict[str, Any] = {"old_logprobs": old.clone()}
    for step in (1, 2):
        # As train/update.py: forward and backward one micro-batch at a time.
        for start in range(0, rows, micro):
            part = [t[start : start + micro] for t in batch]
            new = completion_logprobs(model, *part, temperature=temperature)
            mark(f"forward{step}")
            # A ratio-shaped loss: the backward goes through exp(new - old) as the trainer's.
            loss = ((new - old[start : start + micro]).exp() * part[3]).sum().div(rows)
            loss.backward()
            mark(f"backward{step}")
            if point["dump"]:
                record(numbers, step, new, loss, model)
            del new, loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mark(f"step{step}")
    if point["dump"]:
        torch.save(numbers, point["dump"])
    params = sum(p.numel() for p in model.parameters())
    return {
        **point, "code": code_version(), "vocab": vocab, "params_m": params / 1e6,
        "logits_mb": micro * (clen + 1) * vocab * 4 / 2**20, "weights_mb": params * 4 / 2**20,
        "phases": phases, "peak_mb": peak_rss_mb(),
    }  # fmt: skip


def compare(a: Path, b: Path) -> dict[str, float]:
    """The largest absolute difference of each --dump entry between two runs."""
    import torch

    one, two = torch.load(a), torch.load(b)
    out = {}
    for key in sorted(one.keys() & two.keys()):
        x, y = torch.as_tensor(one[key]), torch.as_tensor(two[key])
        out[f"{key} max |diff|"] = (x - y).abs().max().item()
        out[f"{key} max |value|"] = x.abs().max().item()
    return out


def table(results: list[dict[str, Any]]) -> str:
    """A markdown table, one row per result: peak RSS in MB after each phase."""
    head = (
        "| code | malloc | B | micro | ckpt | L | V | log-probs | logits MB | weights MB | "
        "after load | after old | forward | backward | step 1 | steady (2nd step) | peak MB |"
    )
    lines = [head, "|" + "---|" * 17]
    for r in results:
        p = r["phases"]
        cells = [
            r.get("code", "?"), r.get("malloc", "default"), r["batch"], r["micro"] or r["batch"],
            "on" if r["checkpointing"] else "off", r["length"], r["vocab"], r["logprobs"], f"{r['logits_mb']:.0f}",
            f"{r['weights_mb']:.0f}", f"{p['load']['peak_mb']:.0f}", f"{p['old']['peak_mb']:.0f}",
            f"{p['forward1']['peak_mb']:.0f}", f"{p['backward1']['peak_mb']:.0f}",
            f"{p['step1']['peak_mb']:.0f}", f"{p['backward2']['peak_mb']:.0f}",
            f"**{r['peak_mb']:.0f}**",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    """Run every point of the grid in its own worker; print the table, write --out."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=_ints, default=[4, 16], help="completions per micro-batch")
    p.add_argument("--length", type=_ints, default=[50, 150], help="completion tokens")
    p.add_argument("--vocab", type=_ints, default=[8192, 49152])
    p.add_argument("--prompt", type=int, default=80, help="prompt tokens (chat template included)")
    p.add_argument("--logprobs", default="chunked,full", help="chunked (now), full (before)")
    p.add_argument("--load", choices=["random", "smollm2"], default="random")
    p.add_argument("--micro", type=_ints, default=[0], help="rows per micro-batch (0: all)")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--malloc",
        choices=["trainer", "default"],
        default="trainer",
        help="trainer: return freed memory as tic-grpo train does; default: glibc's",
    )
    p.add_argument(
        "--dump",
        type=Path,
        help="save each step's log-probs, loss, grad norm here "
        "(one point only; compare two checkouts with --compare)",
    )
    p.add_argument("--compare", type=Path, nargs=2, help="compare two --dump files and exit")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.compare:
        print(json.dumps(compare(*args.compare), indent=1))
        return 0
    vocabs = args.vocab if args.load == "random" else [0]
    results = []
    for mode in args.logprobs.split(","):
        for vocab in vocabs:
            for batch, length, micro in itertools.product(args.batch, args.length, args.micro):
                if micro <= batch:
                    point = dict(
                        batch=batch, length=length, vocab=vocab, prompt=args.prompt,
                        logprobs=mode, load=args.load, temperature=args.temperature,
                        threads=args.threads, micro=micro, checkpointing=args.checkpointing,
                        malloc=args.malloc, dump=str(args.dump) if args.dump else None,
                    )  # fmt: skip
                    result, load = run_worker(Path(__file__), ["--worker", json.dumps(point)])
                    result["other_cores"] = load.other_cores
                    results.append(result)
                    print(table([result]).splitlines()[-1], flush=True)
    report = {"machine": machine(), "command": " ".join(sys.argv), "results": results}
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
