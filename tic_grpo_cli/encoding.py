"""Prompt text to the ids the model is fed, one rule for the sampler and the checks at load.

A chat template writes every special token the model expects (Llama-3's, Gemma's and
DeepSeek-R1-Distill's write `{{ bos_token }}` first), so its output is encoded as written,
as `apply_chat_template(tokenize=True)` encodes it; encoding it with the tokenizer's own
special tokens added would put a second BOS in front. Plain text (a model without a chat
template, like the tiny one, trained on `<bos> prompt`) gets the tokenizer's own.

The data layer marks what a chat template rendered (`ChatPrompt`), so a template that opens
with plain text (Zephyr's `<|user|>` is no special token) is encoded as written too; an
unmarked prompt that opens with a special token (a caller's own rendering) counts as one.
"""

from __future__ import annotations

from typing import Any

import torch


class ChatPrompt(str):
    """A prompt a chat template rendered: its ids are its text's, nothing added. Anything
    loaded with `weights_only=True` (trainer_state.pt) must hold it as `str(prompt)`."""

    __slots__ = ()


def special_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Every special token's text: the named ones (bos, eos, ...) and added tokens marked
    special (`<|im_start|>`, `<start_of_turn>`)."""
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or ())
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens |= {token.content for token in added.values() if token.special}
    return tuple(sorted(t for t in tokens if t))


def prompt_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """The token ids each prompt feeds the model: a chat template's output (a `ChatPrompt`,
    or any prompt that begins with a special token) as written, plain text with the
    tokenizer's special tokens."""
    specials = special_tokens(tokenizer)
    templated = [
        isinstance(p, ChatPrompt) or (bool(specials) and p.startswith(specials)) for p in prompts
    ]
    ids: list[list[int]] = [[] for _ in prompts]
    for as_written in (True, False):
        rows = [i for i, t in enumerate(templated) if t == as_written]
        if rows:
            encoded = tokenizer([prompts[i] for i in rows], add_special_tokens=not as_written)
            for i, row in zip(rows, encoded["input_ids"], strict=True):
                ids[i] = list(row)
    return ids


def encode_prompts(tokenizer: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """`prompt_ids` left-padded with the pad id: ids [B, P] long and attention mask [B, P]
    bool. Raises ValueError when the tokenizer has no pad token."""
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; set tokenizer.pad_token before generating")
    rows = prompt_ids(tokenizer, prompts)
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = True
    return ids, mask
