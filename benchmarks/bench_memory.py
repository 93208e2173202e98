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


def build_model(load: str, vocab: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if load == "smollm2":
        from benchlib import train_config

        from tic_grpo_cli.models import load_model_and_tokenizer

        cfg = train_config("smollm2_135m")
        model, _ = load_model_and_tokenizer(cfg.model, torch.device("cpu"), torch.float32)
        return model
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, **SMOLLM2_SHAPE)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).train()


def worker(point: dict[str, Any]) -> dict[str, Any]:
    """One measurement: RSS after each phase of two micro-batch updates (see the docstring)."""
    import torch

    from tic_grpo_cli import logprobs
    from tic_grpo_cli.sampling import completion_logprobs

    torch.set_num_threads(point["threads"])
    if point["logprobs"] == "full":
        logprobs.CHUNK_ELEMENTS = 2**62  # one slice: the plain formula, as before
    phases: dict[str, dict[str, float]] = {}

    def mark(name: str) -> None:
        phases[name] = {"rss_mb": current_rss_mb(), "peak_mb": peak_rss_mb()}

    mark("start")
    model = build_model(point["load"], point["vocab"])
    vocab = model.config.vocab_size
    mark("load")
    g = torch.Generator().manual_seed(0)
    rows, plen, clen = point["batch"], point["prompt"], point["length"]
    prompt_ids = torch.randint(vocab, (rows, plen), generator=g)
    completion_ids = torch.randint(vocab, (rows, clen), generator=g)
    prompt_mask = torch.ones(rows, plen, dtype=torch.bool)
    completion_mask = torch.ones(rows, clen, dtype=torch.bool)
    args = (model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    if point["checkpointing"]:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    micro = point["micro"] or rows
    temperature = point["temperature"]
    with torch.no_grad():
        old = completion_logprobs(*args, micro_batch_size=micro, temperature=temperature)
    mark("old")
    for step in (1, 2):
        # As train/update.py: forward and backward one micro-batch at a time.
        for start in range(0, rows, micro):
            part = [t[start : start + micro] for t in args[1:]]
            new = completion_logprobs(model, *part, temperature=temperature)
            mark(f"forward{step}")
            # A ratio-shaped loss: the backward goes through exp(new - old) as the trainer's.
            ratio = (new - old[start : start + micro]).exp()
            (ratio * part[3]).sum().div(rows).backward()
            mark(f"backward{step}")
            del new, ratio
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mark(f"step{step}")
    params = sum(p.numel() for p in model.parameters())
    return {
        **point,
        "vocab": vocab,
        "params_m": params / 1e6,
        "logits_mb": micro * (clen + 1) * vocab * 4 / 2**20,
        "weights_mb": params * 4 / 2**20,
        "phases": phases,
        "peak_mb": peak_rss_mb(),
    }


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| B | micro | ckpt | L | V | log-probs | logits MB | weights MB | after load | "
        "after old | forward | backward | step 1 | steady (2nd step) | peak MB |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in results:
        p = r["phases"]
        cells = [
            r["batch"], r["micro"] or r["batch"], "on" if r["checkpointing"] else "off",
            r["length"], r["vocab"], r["logprobs"], f"{r['logits_mb']:.0f}",
            f"{r['weights_mb']:.0f}", f"{p['load']['peak_mb']:.0f}", f"{p['old']['peak_mb']:.0f}",
            f"{p['forward1']['peak_mb']:.0f}", f"{p['backward1']['peak_mb']:.0f}",
            f"{p['step1']['peak_mb']:.0f}", f"{p['backward2']['peak_mb']:.0f}",
            f"**{r['peak_mb']:.0f}**",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> int:
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
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
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
