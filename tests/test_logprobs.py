"""The sampled tokens' log-probs in bounded memory (tic_grpo_cli/logprobs.py) equal the
full-vocabulary formula they replace, values and gradients, and need less memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from tic_grpo_cli import logprobs
from tic_grpo_cli.sampling import token_logprobs


def reference(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """The formula sampling.token_logprobs used before: the whole [..., V] tensor at once."""
    logits = logits.float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def values_and_grad(fn, logits, tokens, temperature, upstream, mask):
    leaf = logits.detach().clone().requires_grad_(True)
    # As completion_logprobs calls it: the last position dropped (a non-contiguous view),
    # padding masked.
    out = fn(leaf[:, :-1], tokens, temperature).masked_fill(~mask, 0.0)
    (out * upstream).sum().backward()
    return out.detach(), leaf.grad


@pytest.mark.parametrize("chunk", [7, 40, 10**9])  # positions split, rows split, one slice
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equal_to_the_full_formula(monkeypatch, chunk, temperature, dtype):
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(0)
    rows, length, vocab = 5, 6, 11
    logits = (torch.randn(rows, length + 1, vocab, generator=g) * 4).to(dtype)
    tokens = torch.randint(vocab, (rows, length), generator=g)
    upstream = torch.randn(rows, length, generator=g)
    mask = torch.rand(rows, length, generator=g) > 0.2
    new, new_grad = values_and_grad(token_logprobs, logits, tokens, temperature, upstream, mask)
    old, old_grad = values_and_grad(reference, logits, tokens, temperature, upstream, mask)
    assert new.dtype == torch.float32 and new_grad.dtype == dtype
    torch.testing.assert_close(new, old, rtol=0, atol=1e-6)
    torch.testing.assert_close(new_grad, old_grad, rtol=1e-6, atol=1e-6)


def test_one_position_per_row_as_the_sampler_calls_it(monkeypatch):
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 8)
    logits = torch.randn(6, 17)
    tokens = torch.randint(17, (6,))
    torch.testing.assert_close(token_logprobs(logits, tokens, 0.5), reference(logits, tokens, 0.5))


def test_a_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="do not match"):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


# A fresh interpreter: ru_maxrss is the process's peak, so nothing else may have raised it.
PEAK = textwrap.dedent(
    """
    import json, resource, torch
    try:  # the slice size is the module's knob; smaller slices show the bound more clearly
        import tic_grpo_cli.logprobs as lp
        lp.CHUNK_ELEMENTS = 2**18
    except ImportError:
        pass
    from tic_grpo_cli.sampling import token_logprobs
    torch.manual_seed(0)
    rows, length, vocab = 4, 128, 32768
    logits = torch.randn(rows, length, vocab).requires_grad_(True)
    tokens = torch.randint(vocab, (rows, length))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    token_logprobs(logits, tokens).sum().backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rise": (after - before) * 1024, "logits": logits.numel() * 4}))
    """
)


def test_memory_beyond_the_logits_and_their_gradient_is_bounded():
    """64 MB of logits: the gradient the head's backward needs (64 MB) plus 1 MB slices;
    the full formula held two to three more copies at once."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK], capture_output=True, text=True, check=True, timeout=300
    )
    measured = json.loads(out.stdout)
    assert measured["rise"] < 1.5 * measured["logits"], measured


def test_training_is_unchanged_when_the_log_probs_are_sliced(tmp_path, monkeypatch):
    """The trainer's numbers with slices of 37 logits (the tiny model's vocabulary is 101,
    so every position is its own slice, and the head is applied slice by slice) against
    one slice: the model's own forward and the formula as before."""
    from hydra import compose, initialize_config_module

    from tic_grpo_cli.config.schema import register_configs
    from tic_grpo_cli.runs.files import read_jsonl
    from tic_grpo_cli.train.loop import train

    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "trainer.max_steps=6",
                "trainer.rollout_batch_size=4",
                "trainer.group_size=4",
                "trainer.minibatch_size=2",
                "trainer.eval_every=0",
                "trainer.temperature=0.9",
                "wandb.mode=disabled",
                "hardware.num_threads=1",
            ],
        )
    runs = {}
    for name, chunk in (("whole", 2**62), ("sliced", 37)):
        monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", chunk)
        train(cfg, tmp_path / name)
        runs[name] = [
            {k: v for k, v in row.items() if not k.startswith(("time/", "throughput/"))}
            for row in read_jsonl(tmp_path / name / "metrics.jsonl")
        ]
    # The same samples, rewards and steps; the losses and ratios agree to float rounding
    # (the head's matmul runs on slices, so its sums are taken in another order).
    assert len(runs["sliced"]) == len(runs["whole"])
    for sliced, whole in zip(runs["sliced"], runs["whole"], strict=True):
        assert sliced.keys() == whole.keys()
        for key, value in whole.items():
            if key.startswith("mismatch/"):  # sampler vs trainer: rounding by definition
                assert sliced[key] == pytest.approx(value, abs=1e-5), key
            elif isinstance(value, float):
                assert sliced[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
            else:
                assert sliced[key] == value, key


def small_llama(vocab: int = 300, model_type: str = "llama"):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    kinds = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_cls, model_cls = kinds[model_type]
    config = config_cls(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    return model_cls(config).train()


@pytest.mark.parametrize("chunk", [100, 1000, 10**9])  # a row in pieces, whole rows, one slice
def test_the_sliced_head_equals_the_models_own_forward(monkeypatch, chunk):
    from tic_grpo_cli.logprobs import completion_logprobs

    model = small_llama()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(300, (3, 5), generator=g)
    prompt_mask = torch.ones(3, 5, dtype=torch.bool)
    prompt_mask[0, :2] = False  # left padding
    completion = torch.randint(300, (3, 7), generator=g)
    completion_mask = torch.ones(3, 7, dtype=torch.bool)
    completion_mask[1, 4:] = False
    args = (model, prompt, prompt_mask, completion, completion_mask)
    results = {}
    for name, size in (("forward", 2**62), ("sliced", chunk)):
        monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", size)
        model.zero_grad()
        out = completion_logprobs(*args, temperature=0.8)
        out.sum().backward()
        results[name] = (out.detach(), [p.grad.clone() for p in model.parameters()])
    (a, grads_a), (b, grads_b) = results["forward"], results["sliced"]
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)


def test_only_plain_heads_are_sliced():
    from transformers import GPT2Config, GPT2LMHeadModel

    assert logprobs.plain_head(small_llama()) is not None
    assert logprobs.plain_head(small_llama(model_type="qwen2")) is not None
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    assert logprobs.plain_head(gpt2) is None  # not on the list: its own forward
    assert logprobs.plain_head(torch.nn.Linear(2, 2)) is None


HEAD_PEAK = textwrap.dedent(
    """
    import json, resource, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    try:
        import tic_grpo_cli.logprobs as lp
        lp.CHUNK_ELEMENTS = 2**18
    except ImportError:
        pass
    from tic_grpo_cli.logprobs import completion_logprobs
    torch.manual_seed(0)
    vocab, rows, length = 32768, 4, 128
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4)
    model = LlamaForCausalLM(config)
    ids = torch.randint(vocab, (rows, length))
    ones = torch.ones(rows, length, dtype=torch.bool)
    # A warm-up of one row: the allocator's and autograd's first-use costs come before.
    completion_logprobs(model, ids[:1, :8], ones[:1, :8], ids[:1], ones[:1]).sum().backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    completion_logprobs(model, ids[:, :8], ones[:, :8], ids, ones).sum().backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rise": (after - before) * 1024, "logits": rows * length * vocab * 4}))
    """
)


def test_the_sliced_head_never_holds_the_whole_logits():
    """64 MB of logits for 4 x 128 tokens: the head applied slice by slice keeps the rise of
    a forward and backward to a fraction of them (before: the logits, their gradient and
    the log-prob temporaries, ~3x)."""
    out = subprocess.run(
        [sys.executable, "-c", HEAD_PEAK], capture_output=True, text=True, check=True, timeout=600
    )
    measured = json.loads(out.stdout)
    assert measured["rise"] < 0.5 * measured["logits"], measured
