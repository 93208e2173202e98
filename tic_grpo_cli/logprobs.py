"""log softmax(logits / T)[token] for the sampled tokens only, in bounded memory, and
`completion_logprobs`: the trainer's log-probs of given completions (the sampler's twin).

The textbook `log_softmax(logits)[token]`, or `logits[token] - logsumexp(logits)` through
autograd, holds several float32 copies of the [B, L, V] logits at once: the exp inside
logsumexp in the forward, then in the backward the exp again, the gradient of the gather
(a zero tensor the logits' size) and their sum. With a real vocabulary this is the peak of
a training step: 16 completions x 151 positions x 49,152 tokens (SmolLM2) is 475 MB per
copy (docs/benchmarks.md, "Memory").

`token_logprobs` computes the same numbers in slices of at most `CHUNK_ELEMENTS` logits,
forward and backward (a custom autograd function): besides the logits themselves (which the
model's head produced and the backward needs) and their gradient (which the head's backward
needs), only one slice's temporaries exist at a time. Each slice runs the same operations
autograd would (`x - logsumexp(x)`; gradient `onehot * g - g * exp(x - lse)`, then `/ T`),
so the result equals the unsliced formula to float rounding (tests/test_logprobs.py).

`head_token_logprobs` goes one step further for models whose logits are just the head
applied to the decoder's output (`plain_head`): it applies the head itself, one slice at a
time under activation checkpointing, so neither the [B, L, V] logits nor their gradient
ever exist whole; each slice's logits are computed again in the backward (one more head
matmul, a few % of a step). The head's matmul then runs on slices, so logits agree with the
whole-batch product to float rounding, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Logits per slice: 2**24 float32 values are 64 MiB of temporaries; a slice of the tiny
# model's whole micro-batch is one slice, so small vocabularies take a single pass.
CHUNK_ELEMENTS = 2**24


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature)[tokens] in float32.

    `logits`: [..., V] of any float dtype (the division by the temperature happens in
    float32, as in `sampling.sample_next`); `tokens`: [...] int64, the same leading shape.
    Returns [...] float32, differentiable with respect to `logits`; temperature 0 (greedy)
    or 1 means the raw logits. Memory beyond the logits and their gradient is bounded by
    `CHUNK_ELEMENTS` whatever the batch, length and vocabulary.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    scale = 1.0 if temperature in (0.0, 1.0) else float(temperature)
    if logits.numel() <= CHUNK_ELEMENTS:  # one slice: plain autograd, the same operations
        x = _scaled(logits, scale)
        return x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)
    # [N, L, V] views of any leading shape, without copying the (non-contiguous) logits.
    if logits.dim() == 2:
        return _SelectedLogprobs.apply(logits[:, None], tokens[:, None], scale)[:, 0]
    if logits.dim() == 1:
        return _SelectedLogprobs.apply(logits[None, None], tokens[None, None], scale)[0, 0]
    lead = logits.shape[:-2]
    out = _SelectedLogprobs.apply(
        logits.reshape(-1, *logits.shape[-2:]), tokens.reshape(-1, tokens.shape[-1]), scale
    )
    return out.reshape(*lead, tokens.shape[-1])


def _slices(shape: torch.Size) -> Iterator[tuple[slice, slice]]:
    """(rows, positions) slices of an [N, L, V] tensor, each at most CHUNK_ELEMENTS values
    (at least one position), whole rows when they fit."""
    rows, length, vocab = shape
    per_row = max(1, length * vocab)
    if per_row <= CHUNK_ELEMENTS:
        step = max(1, CHUNK_ELEMENTS // per_row)
        for r in range(0, rows, step):
            yield slice(r, r + step), slice(None)
        return
    step = max(1, CHUNK_ELEMENTS // max(1, vocab))
    for r in range(rows):
        for p in range(0, length, step):
            yield slice(r, r + 1), slice(p, p + step)


def _scaled(x: Tensor, scale: float) -> Tensor:
    x = x.float()
    return x / scale if scale != 1.0 else x


class _SelectedLogprobs(torch.autograd.Function):
    """[N, L, V] logits, [N, L] tokens -> [N, L] float32 log-probs, slice by slice."""

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, scale: float) -> Tensor:
        out = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for rows, positions in _slices(logits.shape):
            x = _scaled(logits[rows, positions], scale)
            picked = x.gather(-1, tokens[rows, positions, None]).squeeze(-1)
            lse[rows, positions] = torch.logsumexp(x, dim=-1)
            out[rows, positions] = picked - lse[rows, positions]
        ctx.save_for_backward(logits, tokens, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        logits, tokens, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for rows, positions in _slices(logits.shape):
            x = _scaled(logits[rows, positions], ctx.scale)
            g = grad[rows, positions, None]
            # What autograd does for `picked - logsumexp(x)`: logsumexp's backward,
            # grad * exp(x - lse) with grad = -g, plus the gather's g at the token.
            gx = (-g) * (x - lse[rows, positions, None]).exp()
            gx.scatter_add_(-1, tokens[rows, positions, None], g)
            if ctx.scale != 1.0:
                gx = gx / ctx.scale
            grad_logits[rows, positions] = gx
        return grad_logits, None, None


# Architectures whose logits are exactly head(final hidden state): no soft cap or scale
# follows the head (Gemma's, Cohere's do), so applying the head ourselves is the same model.
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def plain_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The output projection of `model` when `head_token_logprobs` may replace its forward's
    last step: a transformers model of a `PLAIN_HEAD_MODELS` architecture whose head is a
    plain Linear. None otherwise: other architectures, a LoRA (peft) wrapper, FSDP (the
    root's hooks gather the head's weight only around the model's own forward)."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return None
    if getattr(model.config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2 cannot have wrapped it
        FSDPModule = ()
    if isinstance(model, FSDPModule):
        return None
    head = model.get_output_embeddings()
    return head if type(head) is torch.nn.Linear else None


def model_token_logprobs(
    model: torch.nn.Module, inputs: dict, tokens: Tensor, temperature: float = 1.0
) -> Tensor:
    """log softmax(logits / temperature) of `tokens` [B, L], the last L tokens of
    `inputs["input_ids"]`, as `model(**inputs)` predicts them: [B, L] float32.

    A model with a `plain_head` whose [B, L, V] logits would exceed one slice runs its
    decoder, then `head_token_logprobs`; any other model its own forward, keeping the
    logits of the L + 1 last positions only, then `token_logprobs`."""
    length = tokens.shape[1]
    head = plain_head(model)
    if head is not None and tokens.numel() * head.out_features > CHUNK_ELEMENTS:
        hidden = model.get_decoder()(**inputs).last_hidden_state
        # Position t predicts token t + 1: the last prompt position the first completion
        # token; the final position predicts nothing.
        return head_token_logprobs(hidden[:, -length - 1 : -1], head, tokens, temperature)
    out = model(**inputs, logits_to_keep=length + 1)  # the same positions, then the last
    return token_logprobs(out.logits[:, :-1], tokens, temperature)


def head_token_logprobs(
    hidden: Tensor, head: torch.nn.Linear, tokens: Tensor, temperature: float = 1.0
) -> Tensor:
    """log softmax(head(hidden) / temperature)[tokens], [N, L] float32, without the [N, L, V]
    logits: `hidden` [N, L, H] goes through `head` one slice of at most CHUNK_ELEMENTS logits
    at a time, each slice checkpointed (its logits recomputed in the backward)."""
    rows, length, _ = hidden.shape
    shape = torch.Size((rows, length, head.out_features))
    parts = [
        (r, checkpoint(_slice_logprobs, hidden[r, p], head, tokens[r, p], temperature,
                       use_reentrant=False))
        for r, p in _slices(shape)
    ]  # fmt: skip
    # Slices are whole rows, or pieces of one row in order: put each row together first.
    by_row: dict[int, list[Tensor]] = {}
    for r, part in parts:
        by_row.setdefault(r.start, []).append(part)
    return torch.cat([torch.cat(pieces, dim=1) for pieces in by_row.values()])


def _slice_logprobs(hidden: Tensor, head: torch.nn.Linear, tokens: Tensor, temperature: float):
    return token_logprobs(head(hidden), tokens, temperature)


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """Positions that count only attended tokens, so left padding does not shift them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logprobs(
    model: PreTrainedModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    micro_batch_size: int | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """log pi(completion token | prompt, earlier tokens), [B, L] float32, 0 where masked.

    pi is softmax(logits / temperature): pass the sampling temperature so these are the
    log-probs of the distribution the completions were drawn from (`Generation.logprobs`).

    Differentiable: call it under ``torch.no_grad()`` for old/reference log-probs. One
    forward over ``[prompt | completion]``; only the L positions that predict completion
    tokens go through the vocab projection. ``micro_batch_size`` chunks rows to bound
    activation memory and gives the same result. Dropout is the caller's business: use
    ``model.eval()`` for log-probs that match the sampler's.
    """
    rows = prompt_ids.shape[0]
    step = micro_batch_size or rows
    parts = [
        _completion_logprobs_chunk(
            model,
            prompt_ids[i : i + step],
            prompt_mask[i : i + step],
            completion_ids[i : i + step],
            completion_mask[i : i + step],
            temperature,
        )
        for i in range(0, rows, step)
    ]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _completion_logprobs_chunk(
    model: PreTrainedModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    temperature: float,
) -> Tensor:
    mask = torch.cat([prompt_mask, completion_mask], dim=1).bool()
    inputs = {
        "input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
        "attention_mask": mask,
        "position_ids": position_ids_from_mask(mask),
        "use_cache": False,
    }
    logprobs = model_token_logprobs(model, inputs, completion_ids, temperature)
    return logprobs.masked_fill(~completion_mask.bool(), 0.0)
