"""A real model's shape without its weights: Qwen2.5-0.5B's architecture with random weights
and a synthetic tokenizer of its vocabulary size, saved as a `save_pretrained` directory that
`model.name_or_path=` loads like any checkpoint. Throughput depends on the shapes alone, so
the GPU check measures at this size with no hub access (scripts/gpu_check.py).

    python benchmarks/shape_model.py DIR [--shrink]

The config values are Qwen2.5-0.5B's published config.json (the base and Instruct models
share the architecture): 24 layers, hidden 896, 14 query / 2 key-value heads, MLP 4864,
vocabulary 151,936, tied embeddings, RoPE theta 1e6; 494 M parameters.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import torch

QWEN2_5_0_5B = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "max_window_layers": 24,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
}
# The dry run's stand-in: the same vocabulary (the tokenizer and the LM head keep their
# size), two thin layers.
SHRUNK = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# The only EOS the benchmarks declare. Random weights emit any token with probability
# ~1/151,936 per step, so a completion stops early about once per 150k tokens.
NEVER_TOKEN = "<eos>"


def synthetic_tokenizer(vocab_size: int):
    """A character-level tokenizer (the prompts are arithmetic text) padded with filler tokens
    `<t123>` up to `vocab_size`, so the embedding and the LM head have the real model's size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = list(string.digits + string.ascii_letters + string.punctuation + " \n")
    tokens = SPECIALS + chars
    tokens += [f"<t{i}>" for i in range(vocab_size - len(tokens))]
    vocab = {token: i for i, token in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token=NEVER_TOKEN, pad_token="<pad>",
        unk_token="<unk>", padding_side="left",
    )  # fmt: skip


def save_random_model(path: Path, shrink: bool = False, seed: int = 0) -> Path:
    """Build and save the model (bfloat16 on disk: half the bytes; loaders upcast) and its
    tokenizer into `path`; returns `path`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = synthetic_tokenizer(QWEN2_5_0_5B["vocab_size"])
    ids = {name: tokenizer.convert_tokens_to_ids(t)
           for name, t in (("pad_token_id", "<pad>"), ("bos_token_id", "<bos>"),
                           ("eos_token_id", NEVER_TOKEN))}  # fmt: skip
    config = Qwen2Config(**{**QWEN2_5_0_5B, **(SHRUNK if shrink else {})}, **ids)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--shrink", action="store_true", help="2 thin layers (dry runs)")
    args = parser.parse_args()
    save_random_model(args.dir, args.shrink)
    print(args.dir)


if __name__ == "__main__":
    main()
