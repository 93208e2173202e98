"""Time `tic_grpo_cli.sampling.generate` against HF `model.generate()` on a random Llama.

    python benchmarks/bench_generate.py                  # ~1M params, batch 128 x 32 tokens
    python benchmarks/bench_generate.py --shape 135m     # SmolLM-135M's shape, much slower

Both sample at temperature 1 with no top-k/top-p from the same tokenized prompts and stop
at EOS. A random model almost never emits EOS; `--eos-share 0.03 --new-tokens 128` declares
3% of the vocabulary EOS to get ragged completions with a long tail, as in RL. Wall-clock medians on a shared machine: rerun when the load average is low.
"""

from __future__ import annotations

import argparse
import statistics
import string
import time

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tic_grpo_cli.sampling import generate

SHAPES = {
    "1m": dict(
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
    ),
    "135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    ),
}


def char_tokenizer() -> PreTrainedTokenizerFast:
    symbols = ["<pad>", "<eos>", "<unk>", *string.printable[:95]]
    core = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", padding_side="left"
    )


def build_model(shape: str, vocab_size: int, tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **SHAPES[shape],
    )
    return LlamaForCausalLM(config).eval()


def prompts(batch: int) -> list[str]:
    # Ragged, 8-23 characters, like short arithmetic prompts.
    rng = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 24, (batch,), generator=rng).tolist()
    return [string.ascii_lowercase[:n] for n in lengths]


def median_seconds(fns: dict, reps: int) -> dict[str, float]:
    """Interleaved runs, so a burst of load from elsewhere hits every contender alike."""
    for fn in fns.values():
        fn()  # warm-up: allocator, thread pool, lazy imports
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1m")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eos-share", type=float, default=0.0, help="share of vocab that is EOS")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = char_tokenizer()
    vocab = 100 if args.shape == "1m" else 49152
    model = build_model(args.shape, vocab, tokenizer)
    stops = list(range(3, 3 + int(args.eos_share * vocab)))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *stops]
    texts = prompts(args.batch)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6

    def ours() -> None:
        generate(
            model, tokenizer, texts, args.new_tokens, generator=torch.Generator().manual_seed(0)
        )

    @torch.inference_mode()
    def hf() -> None:
        model.generate(
            **batch,
            max_new_tokens=args.new_tokens,
            do_sample=True,
            temperature=1.0,
            top_k=None,
            top_p=None,
            pad_token_id=tokenizer.pad_token_id,
        )

    print(
        f"{args.shape}: {n_params:.2f}M params, batch {args.batch} x {args.new_tokens} new "
        f"tokens, {args.threads} threads, median of {args.reps}"
    )
    medians = median_seconds({"tic_grpo generate": ours, "HF model.generate": hf}, args.reps)
    for name, seconds in medians.items():
        rate = args.batch * args.new_tokens / seconds
        print(f"  {name:18s} {seconds:8.3f} s   {rate:9,.0f} tokens/s (batch x new tokens / s)")


if __name__ == "__main__":
    main()
