"""Tests for the batched sampler and the completion log-probs it must agree with."""

from __future__ import annotations

import copy
import inspect
import string
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from tic_grpo_cli.logprobs import completion_logprobs
from tic_grpo_cli.sampling import (
    eos_token_ids,
    generate,
    sample_next,
)

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PAD, BOS, EOS = 0, 1, 2
# Ragged on purpose: left padding of 0 to 9 tokens.
PROMPTS = ["12+3=", "7=", "a long prompt here", "99*9=", "x", "hello world"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: one id per character, BOS prepended."""
    chars = list(string.digits + "+-*= " + string.ascii_lowercase)
    vocab = {token: i for i, token in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def tiny_model(arch: str, seed: int) -> PreTrainedModel:
    """A random tiny causal LM. Llama's RoPE only sees relative positions, so it cannot
    catch wrong position ids; GPT-2's learned absolute positions can."""
    torch.manual_seed(seed)
    # A wider init than the default gives peaked logits: no near-ties for argmax.
    ids = dict(initializer_range=0.2, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=128, **ids)
        return GPT2LMHeadModel(config).eval()
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **ids,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request) -> PreTrainedModel:
    return tiny_model(request.param, seed=0)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def eos_model(request, tokenizer) -> PreTrainedModel:
    """A model that stops often: its generation config adds six characters to the EOS ids."""
    model = tiny_model(request.param, seed=1)
    stops = tokenizer.convert_tokens_to_ids(list("abcdef"))
    model.generation_config.eos_token_id = [EOS, *stops]
    return model


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_greedy(model, tokenizer, prompt: str, max_new_tokens: int, eos: list[int]):
    """Reference: one unpadded prompt, a full forward per token, no cache, argmax."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    tokens, logprobs = [], []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids).logits[0, -1].float()
            token = int(logits.argmax())
            tokens.append(token)
            logprobs.append(float(logits.log_softmax(-1)[token]))
            if token in eos:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokens, logprobs


def rows(gen) -> list[list[int]]:
    return [
        ids[mask].tolist()
        for ids, mask in zip(gen.completion_ids, gen.completion_mask, strict=True)
    ]


def test_shapes_and_masks(eos_model, tokenizer):
    gen = generate(eos_model, tokenizer, PROMPTS * 2, max_new_tokens=8, generator=seeded(0))
    batch, length = gen.completion_ids.shape
    assert batch == len(PROMPTS) * 2 and length <= 8
    assert gen.prompt_ids.shape == gen.prompt_mask.shape and gen.prompt_ids.shape[0] == batch
    assert gen.completion_mask.shape == gen.logprobs.shape == (batch, length)
    assert gen.prompt_mask.dtype == gen.completion_mask.dtype == gen.finished.dtype == torch.bool
    assert gen.logprobs.dtype == torch.float32
    # left padding: once a row starts, it never stops
    assert (gen.prompt_mask[:, 1:] >= gen.prompt_mask[:, :-1]).all()
    assert (gen.prompt_ids[~gen.prompt_mask] == PAD).all()
    # right padding: once a completion stops, it never restarts
    assert (gen.completion_mask[:, 1:] <= gen.completion_mask[:, :-1]).all()
    assert (gen.completion_ids[~gen.completion_mask] == PAD).all()
    assert (gen.logprobs[~gen.completion_mask] == 0).all()
    assert (gen.logprobs[gen.completion_mask] < 0).all()
    assert gen.completion_mask.sum(-1).max() == length  # L is the longest completion
    assert gen.texts == tokenizer.batch_decode(rows(gen), skip_special_tokens=True)
    # ordinary tensors, not inference-mode ones: the trainer may edit them in place
    assert not any(
        t.is_inference() for t in (gen.completion_ids, gen.completion_mask, gen.logprobs)
    )


def test_eos_ends_a_completion(eos_model, tokenizer):
    eos = eos_token_ids(eos_model, tokenizer)
    gen = generate(eos_model, tokenizer, PROMPTS * 2, max_new_tokens=8, generator=seeded(0))
    lengths = gen.completion_mask.sum(-1)
    assert 0 < gen.finished.sum() < len(gen.finished), "seed no longer gives ragged stops"
    assert len(set(lengths.tolist())) > 2, "seed no longer gives ragged lengths"
    for tokens, finished in zip(rows(gen), gen.finished, strict=True):
        # the EOS is kept, is last, and is the only one; truncated rows ran to the limit
        assert [t in eos for t in tokens] == [False] * (len(tokens) - 1) + [bool(finished)]
        assert finished or len(tokens) == 8


def test_eos_ids_from_tokenizer_list_and_generation_config(model, eos_model, tokenizer):
    assert eos_token_ids(model, tokenizer) == [EOS]
    assert len(eos_token_ids(eos_model, tokenizer)) == 7

    list_eos = SimpleNamespace(eos_token_id=[7, 3])
    assert eos_token_ids(model, list_eos) == [EOS, 3, 7]


def test_stops_early_when_all_finished(eos_model, tokenizer):
    gen = generate(eos_model, tokenizer, PROMPTS, max_new_tokens=64, generator=seeded(0))
    assert gen.finished.all()
    assert gen.completion_ids.shape[1] < 64


def test_greedy_matches_naive_loop(model, tokenizer):
    gen = generate(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=0)
    for i, prompt in enumerate(PROMPTS):
        tokens, logprobs = naive_greedy(model, tokenizer, prompt, 10, [EOS])
        assert rows(gen)[i] == tokens
        torch.testing.assert_close(
            gen.logprobs[i, : len(tokens)], torch.tensor(logprobs), atol=1e-5, rtol=0
        )


def test_greedy_matches_naive_loop_with_early_eos(model, tokenizer):
    free = generate(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=0)
    # Declaring the third greedy token of two rows an EOS makes some rows stop mid-way.
    stopping = copy.deepcopy(model)
    stopping.generation_config.eos_token_id = [EOS, *free.completion_ids[:2, 2].tolist()]
    eos = eos_token_ids(stopping, tokenizer)
    gen = generate(stopping, tokenizer, PROMPTS, max_new_tokens=10, temperature=0)
    expected = [naive_greedy(stopping, tokenizer, p, 10, eos)[0] for p in PROMPTS]
    assert 0 < gen.finished.sum() < len(PROMPTS), "greedy no longer stops on some prompts only"
    assert rows(gen) == expected
    assert gen.finished.tolist() == [tokens[-1] in eos for tokens in expected]


def test_sampling_is_reproducible(model, tokenizer):
    first = generate(model, tokenizer, PROMPTS, max_new_tokens=12, generator=seeded(3))
    again = generate(model, tokenizer, PROMPTS, max_new_tokens=12, generator=seeded(3))
    other = generate(model, tokenizer, PROMPTS, max_new_tokens=12, generator=seeded(4))
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.logprobs, again.logprobs)
    assert not torch.equal(first.completion_ids, other.completion_ids)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_top_k_one_is_greedy(model, tokenizer, temperature):
    greedy = generate(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=0)
    top1 = generate(
        model, tokenizer, PROMPTS, 10, temperature=temperature, top_k=1, generator=seeded(0)
    )
    assert torch.equal(top1.completion_ids, greedy.completion_ids)
    tiny_nucleus = generate(model, tokenizer, PROMPTS, 10, top_p=1e-6, generator=seeded(0))
    assert torch.equal(tiny_nucleus.completion_ids, greedy.completion_ids)


def test_sample_next_draws_from_the_filtered_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20_000, 4)

    def frequencies(**kwargs) -> torch.Tensor:
        draws = sample_next(logits, generator=seeded(0), **kwargs)
        return torch.bincount(draws, minlength=4).float() / len(draws)

    torch.testing.assert_close(
        frequencies(temperature=1.0, top_p=1.0, top_k=0), probs, atol=0.015, rtol=0
    )
    kept = torch.tensor([0.5, 0.3, 0.0, 0.0]) / 0.8
    torch.testing.assert_close(
        frequencies(temperature=1.0, top_p=0.7, top_k=0), kept, atol=0.015, rtol=0
    )
    torch.testing.assert_close(
        frequencies(temperature=1.0, top_p=1.0, top_k=2), kept, atol=0.015, rtol=0
    )
    # temperature 0.5 squares the odds before filtering
    sharp = probs**2 / (probs**2).sum()
    torch.testing.assert_close(
        frequencies(temperature=0.5, top_p=1.0, top_k=0), sharp, atol=0.015, rtol=0
    )


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.7, "top_p": 0.9, "top_k": 20}])
def test_logprobs_agree_with_completion_logprobs(eos_model, tokenizer, kwargs):
    gen = generate(
        eos_model, tokenizer, PROMPTS * 2, max_new_tokens=8, generator=seeded(0), **kwargs
    )
    assert len(set(gen.completion_mask.sum(-1).tolist())) > 2, "completions not ragged"
    args = (gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask)
    recomputed = completion_logprobs(eos_model, *args, temperature=gen.temperature)
    # log softmax(logits / T) in both, whatever top-k / top-p: the sampler's and the
    # trainer's agree to float32 rounding
    assert gen.temperature == kwargs.get("temperature", 1.0)
    torch.testing.assert_close(recomputed, gen.logprobs, atol=1e-5, rtol=0)
    if gen.temperature != 1.0:
        # the raw-logit log-probs are another distribution: off by far more than rounding
        raw = completion_logprobs(eos_model, *args)
        assert (raw - gen.logprobs).abs().max() > 1e-2


def test_completion_logprobs_micro_batches_and_gradients(eos_model, tokenizer):
    gen = generate(eos_model, tokenizer, PROMPTS * 2, max_new_tokens=8, generator=seeded(0))
    args = (gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask)
    whole = completion_logprobs(eos_model, *args)
    chunked = completion_logprobs(eos_model, *args, micro_batch_size=5)
    # Other batch shapes round differently by a few float32 ulps: torch 2.6 differs by
    # 1.2e-6 on a log-prob of -3.4 (relative 3.5e-7), hence the relative term.
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
    assert (whole[~gen.completion_mask] == 0).all()
    whole.sum().backward()
    # fully padded query rows (left padding) must not leak NaNs into the gradients
    grads = [p.grad for p in eos_model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert eos_model.lm_head.weight.grad.abs().sum() > 0
    eos_model.zero_grad(set_to_none=True)


def test_generate_batch_size_chunks_give_the_same_result(eos_model, tokenizer):
    whole = generate(eos_model, tokenizer, PROMPTS * 2, max_new_tokens=8, temperature=0)
    chunked = generate(eos_model, tokenizer, PROMPTS * 2, 8, temperature=0, batch_size=5)
    assert torch.equal(chunked.prompt_ids, whole.prompt_ids)
    assert torch.equal(chunked.completion_mask, whole.completion_mask)
    assert torch.equal(chunked.completion_ids, whole.completion_ids)
    torch.testing.assert_close(chunked.logprobs, whole.logprobs, atol=1e-5, rtol=0)


def test_chunks_ending_at_different_widths_pad_with_non_tokens(eos_model, tokenizer):
    # A stop token that is the first token of some completions but not all makes lengths
    # differ; the short ones go in one chunk, the long ones in another. The narrow chunk's
    # padding up to the batch width must be pad ids, masked out, with log-prob 0.
    model = copy.deepcopy(eos_model)
    first = [
        int(generate(model, tokenizer, [p], 1, temperature=0).completion_ids[0, 0]) for p in PROMPTS
    ]
    stop = next(token for token in first if first.count(token) < len(first))
    model.generation_config.eos_token_id = [EOS, stop]
    alone = [generate(model, tokenizer, [p], max_new_tokens=8, temperature=0) for p in PROMPTS]
    lengths = [int(g.completion_mask.sum()) for g in alone]
    order = sorted(range(len(PROMPTS)), key=lambda i: lengths[i])
    expected = [lengths[i] for i in order]
    short = sum(n < expected[-1] for n in expected)
    assert 0 < short < len(PROMPTS), f"need completions of different lengths, got {lengths}"
    gen = generate(
        model,
        tokenizer,
        [PROMPTS[i] for i in order],
        max_new_tokens=8,
        temperature=0,
        batch_size=short,
    )
    assert gen.completion_mask.sum(1).tolist() == expected
    assert rows(gen) == [rows(alone[i])[0] for i in order]
    padding = ~gen.completion_mask
    assert padding[0, expected[short - 1] :].all()  # the narrow chunk's padding, really there
    assert (gen.completion_ids[padding] == PAD).all()
    assert (gen.logprobs[padding] == 0).all()


def test_left_padding_does_not_change_the_output(model, tokenizer):
    alone = generate(model, tokenizer, ["7="], max_new_tokens=10, temperature=0)
    batched = generate(model, tokenizer, ["7=", *PROMPTS], max_new_tokens=10, temperature=0)
    assert batched.prompt_mask[0].sum() < batched.prompt_mask.shape[1]  # really padded
    length = int(alone.completion_mask.sum())
    assert rows(batched)[0] == rows(alone)[0]
    torch.testing.assert_close(
        batched.logprobs[0, :length], alone.logprobs[0, :length], atol=1e-5, rtol=0
    )


def test_restores_training_mode(model, tokenizer):
    model.train()
    try:
        generate(model, tokenizer, ["1+1="], max_new_tokens=2, temperature=0)
        assert model.training
    finally:
        model.eval()


def test_rejects_a_tokenizer_without_pad(model, tokenizer):
    no_pad = SimpleNamespace(pad_token_id=None, eos_token_id=EOS)
    with pytest.raises(ValueError, match="pad token"):
        generate(model, no_pad, ["1+1="], max_new_tokens=2)


# The name the installed transformers' Llama takes its KV cache under.
LLAMA_CACHE_KEYWORD = (
    "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters
    else "past_key_values"
)  # fmt: skip


class PastKeyValuesLlama(LlamaForCausalLM):
    """A model as transformers 5.17 (the GPU machines' image) has it: the KV cache comes as
    `past_key_values`, and a `cache=` keyword would vanish into **kwargs."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=None, logits_to_keep=0, **kwargs):  # fmt: skip
        assert "cache" not in kwargs, "the sampler passed the cache under the new name"
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=use_cache, logits_to_keep=logits_to_keep,
            **{LLAMA_CACHE_KEYWORD: past_key_values}, **kwargs,
        )  # fmt: skip


def test_a_model_taking_past_key_values_samples_the_same(tokenizer):
    current = tiny_model("llama", seed=0)
    older = PastKeyValuesLlama(current.config).eval()
    older.load_state_dict(current.state_dict())
    a = generate(current, tokenizer, PROMPTS, max_new_tokens=6, generator=seeded(0))
    b = generate(older, tokenizer, PROMPTS, max_new_tokens=6, generator=seeded(0))
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.logprobs, b.logprobs)
