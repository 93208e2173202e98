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
    so every position is its own slice) against one slice: the formula as before."""
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
    assert runs["sliced"] == runs["whole"]
