"""Batched sampling with a KV cache (`generate` -> `Generation`); the log-probs of given
completions (`logprobs.completion_logprobs`) are the other way the policy meets tokens.

`generate` is the hot path of an RL step, so it is a bare loop: one prefill, then one
forward per new token on a pre-allocated KV cache; no logits processors, no stopping-criteria
objects, and finished rows leave the batch. `completion_logprobs` is the differentiable twin
the trainer uses for the policy (and old/reference) log-probs.

Both place tokens the same way, so a completion scores the same in either: the attention
mask is the only source of truth for padding, and position ids are derived from it
(``cumsum - 1``), which makes left padding invisible to the model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tic_grpo_cli.encoding import encode_prompts
from tic_grpo_cli.logprobs import position_ids_from_mask, token_logprobs
from tic_grpo_cli.lora import is_peft

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Generation:
    prompt_ids: Tensor  # [B, P] left-padded with the pad id
    prompt_mask: Tensor  # [B, P] bool
    completion_ids: Tensor  # [B, L] right-padded with the pad id, L = longest completion
    completion_mask: Tensor  # [B, L] bool: generated tokens, the EOS that ended them included
    # [B, L] float32: log softmax(logits / T)[token], T the sampling temperature (raw logits
    # when greedy), before any top-k/top-p truncation: the policy the trainer scores with
    # `completion_logprobs(..., temperature=T)`, so the two agree to rounding; 0 on pad.
    logprobs: Tensor
    texts: list[str]  # decoded completions (special tokens skipped unless asked to keep them)
    finished: Tensor  # [B] bool: ended with EOS (False = truncated at max_new_tokens)
    # The sampling temperature (0: greedy). Scoring these completions for a ratio must use
    # the same one: `completion_logprobs(..., temperature=gen.temperature)`.
    temperature: float = 1.0


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("neither the tokenizer nor the generation config defines an EOS token")
    return sorted(ids)


def sample_next(
    logits: Tensor,
    temperature: float,
    top_p: float,
    top_k: int,
    generator: torch.Generator | None,
) -> Tensor:
    """One token per row of ``logits`` [B, V]: argmax if ``temperature == 0``, else a draw."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k <= 0 and top_p >= 1.0:
        return _gumbel_argmax(logits, generator)
    # topk returns candidates sorted by logit, which is the order nucleus filtering needs;
    # with top_k set, the nucleus is then found among k values instead of a vocab-wide sort.
    k = min(top_k, logits.shape[-1]) if top_k > 0 else logits.shape[-1]
    values, indices = logits.topk(k, dim=-1)
    if top_p < 1.0:
        probs = values.softmax(-1)
        # Drop a candidate once the ones ranked above it already hold top_p of the mass;
        # the first candidate always survives.
        values = values.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf"))
    choice = _gumbel_argmax(values, generator)
    return indices.gather(-1, choice[:, None]).squeeze(-1)


def _gumbel_argmax(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    # argmax(logits - log E), E ~ Exp(1), is an exact draw from softmax(logits); it skips the
    # softmax normalisation and the multinomial kernel (the trick vLLM uses).
    noise = torch.empty_like(logits).exponential_(generator=generator)
    return (logits - noise.log()).argmax(-1)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    skip_special_tokens: bool = True,
) -> Generation:
    """Sample one completion per prompt (repeat a prompt G times for a group of G).

    ``temperature=0`` is greedy. The log-probs returned are those of softmax(logits / T):
    top-k / top-p only restrict which tokens can be drawn, they are not in the log-probs
    (docs/algorithms.md). The generator makes sampling reproducible; a CPU generator
    works with a model on another device (it seeds a device generator). ``batch_size`` bounds
    how many prompts run through the model at once. The model is put in eval mode for the
    call (no dropout while sampling) and restored afterwards. Prompts are encoded by
    `encoding.prompt_ids`; ``skip_special_tokens``: whether ``texts`` (rewards) omit them.
    """
    _check_sampling_args(prompts, max_new_tokens, temperature, top_p, top_k)
    device = next(model.parameters()).device
    eos = torch.tensor(eos_token_ids(model, tokenizer), device=device)
    prompt_ids, prompt_mask = (t.to(device) for t in encode_prompts(tokenizer, prompts))
    pad_id = tokenizer.pad_token_id
    generator = _generator_on(device, generator)
    sample = partial(sample_next, temperature=temperature, top_p=top_p, top_k=top_k,
                     generator=generator)  # fmt: skip

    chunk = batch_size or len(prompts)
    pieces = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), chunk):
            rows = slice(start, start + chunk)
            ids, mask = _trim_left_padding(prompt_ids[rows], prompt_mask[rows])
            pieces.append(
                _decode(model, ids, mask, max_new_tokens, eos, pad_id, sample, temperature)
            )
    finally:
        model.train(was_training)

    # Stacked outside inference mode: the caller gets ordinary tensors it may edit in place.
    completion_ids, completion_mask, logprobs = _stack_right_padded(pieces, pad_id)
    finished = (completion_mask & torch.isin(completion_ids, eos)).any(-1)
    completions = [
        ids[keep].tolist()
        for ids, keep in zip(completion_ids.cpu(), completion_mask.cpu(), strict=True)
    ]
    texts = tokenizer.batch_decode(completions, skip_special_tokens=skip_special_tokens)
    return Generation(
        prompt_ids, prompt_mask, completion_ids, completion_mask, logprobs, texts, finished,
        temperature,
    )  # fmt: skip


def _check_sampling_args(
    prompts: list[str], max_new_tokens: int, temperature: float, top_p: float, top_k: int
) -> None:
    if not prompts:
        raise ValueError("prompts is empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")


def _generator_on(
    device: torch.device, generator: torch.Generator | None
) -> torch.Generator | None:
    # Noise is drawn on the logits' device, and torch refuses a generator from another
    # device; seeding a local one from the caller's keeps runs reproducible.
    if generator is None or generator.device == device:
        return generator
    seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


def _trim_left_padding(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    # A chunk of short prompts need not pay for the batch's longest one.
    first = int(mask.any(0).long().argmax())
    return ids[:, first:], mask[:, first:]


@torch.inference_mode()
def _decode(
    model: PreTrainedModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    max_new_tokens: int,
    eos: Tensor,
    pad_id: int,
    sample: Callable[[Tensor], Tensor],
    temperature: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The decoding loop: returns completion ids, mask and log-probs at `temperature`, each
    [B, steps].

    Finished rows leave the batch (and the KV cache) once they are a quarter of it, so later
    steps pay only for unfinished rows: RL completions are ragged, often with a long tail.
    Dropping rows copies the cache, which is why it is not done for every single EOS.
    """
    batch, prompt_len = prompt_ids.shape
    device = prompt_ids.device
    # Allocated once and sliced each step: generated tokens are always attended.
    attention = torch.ones(batch, prompt_len + max_new_tokens, dtype=torch.bool, device=device)
    attention[:, :prompt_len] = prompt_mask
    positions = position_ids_from_mask(prompt_mask)
    cache = _kv_cache(model.config, capacity=prompt_len + max_new_tokens)
    with_cache = {_cache_keyword(model): cache}
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=positions,
        **with_cache,
        use_cache=True,
        logits_to_keep=1,
    )
    if cache.get_seq_length() == 0:
        # A forward that swallows an unknown keyword (**kwargs) would decode without a cache.
        raise RuntimeError(f"{type(model).__name__} ignored the KV-cache argument")
    next_position = positions[:, -1:] + 1

    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(batch, max_new_tokens, dtype=torch.float32, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)  # which output row each cache row feeds
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        logits = out.logits[:, -1]
        token = sample(logits)
        tokens[rows, step] = token.masked_fill(done, pad_id)
        logprobs[rows, step] = token_logprobs(logits, token, temperature).masked_fill_(done, 0.0)
        lengths[rows] += (~done).long()
        done |= torch.isin(token, eos)
        # One host sync per step, as in HF generate: stop, shrink the batch, or go on.
        n_done = int(done.sum())
        if n_done == len(rows) or step + 1 == max_new_tokens:
            break
        if n_done >= len(rows) / 4:
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, token, done, attention, next_position = (
                t.index_select(0, keep) for t in (rows, token, done, attention, next_position)
            )
        out = model(
            input_ids=token[:, None],
            attention_mask=attention[:, : prompt_len + step + 1],
            position_ids=next_position,
            **with_cache,
            use_cache=True,
        )
        next_position = next_position + 1
    width = int(lengths.max())
    mask = torch.arange(width, device=device) < lengths[:, None]
    return tokens[:, :width], mask, logprobs[:, :width]


def _cache_keyword(model: PreTrainedModel) -> str:
    """The keyword `model`'s forward takes its KV cache under. transformers renamed
    `past_key_values` to `cache` within 5.x: 5.17 (the GPU machines' image) knows only the
    old name and would drop `cache=` into **kwargs; 5.25 still takes the old one, with a
    deprecation warning. A peft or torch.compile wrapper forwards **kwargs: look through it."""
    inner = model.get_base_model() if is_peft(model) else model
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    parameters = inspect.signature(inner.forward).parameters
    return (
        "past_key_values"
        if "past_key_values" in parameters and "cache" not in parameters
        else "cache"
    )


class _PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer whose keys/values are views into buffers sized for the
    whole generation. HF's DynamicLayer concatenates on every step, copying the whole cache:
    O(length) per token, O(length^2) per completion; measured 1.7x slower at 256 new tokens.
    Unlike StaticCache, attention only reads the filled part and rows can be dropped."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(
        self, key_states: Tensor, value_states: Tensor, *args, **kwargs
    ) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            rows, heads = key_states.shape[:2]
            self.key_buffer = key_states.new_empty(rows, heads, self.capacity, key_states.shape[-1])
            self.value_buffer = value_states.new_empty(
                rows, heads, self.capacity, value_states.shape[-1]
            )
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def batch_select_indices(self, indices: Tensor) -> None:
        self.key_buffer = self.key_buffer.index_select(0, indices)
        self.value_buffer = self.value_buffer.index_select(0, indices)
        self._expose()

    def _expose(self) -> None:
        # DynamicLayer's length bookkeeping and HF's masks read self.keys / self.values.
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]


def _kv_cache(config, capacity: int) -> DynamicCache:
    cache = DynamicCache(config=config)
    # Sliding-window and other special layers keep HF's implementation.
    cache.layers = [
        _PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer
        for layer in cache.layers
    ]
    return cache


def _stack_right_padded(
    pieces: list[tuple[Tensor, Tensor, Tensor]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate per-chunk (ids, mask, logprobs) whose widths differ, padding on the right."""
    width = max(ids.shape[1] for ids, _, _ in pieces)

    def pad(t: Tensor, value) -> Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    ids = torch.cat([pad(ids, pad_id) for ids, _, _ in pieces])
    mask = torch.cat([pad(mask, False) for _, mask, _ in pieces])
    logprobs = torch.cat([pad(lp, 0.0) for _, _, lp in pieces])
    return ids, mask, logprobs
