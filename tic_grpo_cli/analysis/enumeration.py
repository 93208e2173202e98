"""A policy small enough to list every completion: the enumerated problem (all completions
up to length T, a reward, the prefix each token came from) and a policy mapping a flat θ to
the log-probs of every completion's tokens, so J(θ) and ∇J(θ) are exact float64 sums.

Used by gradient_bias.py (and through it length_sensitivity.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

EOS = 0  # token id that ends a completion early when the vocabulary has one
PATTERN = (1, 2)  # the reward asks for these two tokens next to each other
DTYPE = torch.float64


@dataclass(frozen=True)
class Problem:
    """Every completion of a tiny autoregressive policy, as padded tensors."""

    completions: list[tuple[int, ...]]
    tokens: torch.Tensor  # [S, T] long, padded with 0
    mask: torch.Tensor  # [S, T] bool
    prefix_index: torch.Tensor  # [S, T] long: the logit row (prefix) each token came from
    prefix_features: torch.Tensor  # [P, F] float64, the mlp's input per prefix
    rewards: torch.Tensor  # [S] float64
    length: int  # T
    vocab: int

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def enumerate_completions(
    vocab: int, length: int, eos: bool
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """All completions (ending at EOS or at T tokens) and all prefixes that emit a token."""
    completions: list[tuple[int, ...]] = []
    prefixes: list[tuple[int, ...]] = []

    def grow(prefix: tuple[int, ...]) -> None:
        prefixes.append(prefix)
        for token in range(vocab):
            seq = (*prefix, token)
            if (eos and token == EOS) or len(seq) == length:
                completions.append(seq)
            else:
                grow(seq)

    grow(())
    return completions, prefixes


def reward(completion: tuple[int, ...]) -> float:
    """1 if the completion contains PATTERN, else 0: a verifiable reward on the whole text."""
    n = len(PATTERN)
    hits = (completion[i : i + n] == PATTERN for i in range(len(completion) - n + 1))
    return float(any(hits))


def _features(prefix: tuple[int, ...], vocab: int, length: int) -> list[float]:
    # position, previous token (vocab = BOS) and token counts: enough for the mlp to tell
    # prefixes apart while sharing weights between them, as a language model does
    position = [float(len(prefix) == i) for i in range(length)]
    previous = prefix[-1] if prefix else vocab
    prev = [float(previous == v) for v in range(vocab + 1)]
    counts = [prefix.count(v) / length for v in range(vocab)]
    return position + prev + counts


def build_problem(vocab: int, length: int, eos: bool) -> Problem:
    completions, prefixes = enumerate_completions(vocab, length, eos)
    row = {p: i for i, p in enumerate(prefixes)}
    tokens = torch.zeros(len(completions), length, dtype=torch.long)
    mask = torch.zeros(len(completions), length, dtype=torch.bool)
    prefix_index = torch.zeros(len(completions), length, dtype=torch.long)
    for i, seq in enumerate(completions):
        tokens[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = True
        prefix_index[i, : len(seq)] = torch.tensor([row[seq[:t]] for t in range(len(seq))])
    features = torch.tensor([_features(p, vocab, length) for p in prefixes], dtype=DTYPE)
    rewards = torch.tensor([reward(s) for s in completions], dtype=DTYPE)
    return Problem(completions, tokens, mask, prefix_index, features, rewards, length, vocab)


# --- the policy: flat θ -> log-probs of every completion's tokens -----------------------


def make_policy(
    problem: Problem, kind: str, hidden: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """(θ -> logits [P, V], number of parameters). θ is one flat float64 vector."""
    n_prefix, n_feat = problem.prefix_features.shape
    vocab = problem.vocab
    if kind == "tabular":
        return (lambda theta: theta.view(n_prefix, vocab)), n_prefix * vocab
    if kind != "mlp":
        raise ValueError(f"unknown policy {kind!r}: expected 'tabular' or 'mlp'")
    shapes = [(n_feat, hidden), (hidden,), (hidden, vocab), (vocab,)]
    sizes = [math.prod(s) for s in shapes]

    def logits(theta: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (p.view(s) for p, s in zip(theta.split(sizes), shapes, strict=True))
        return torch.tanh(problem.prefix_features @ w1 + b1) @ w2 + b2

    return logits, sum(sizes)


def token_logprobs(
    problem: Problem, logits_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor
) -> torch.Tensor:
    """log π_θ(s_t | s_<t) for every completion and position, 0 on padding: [S, T]."""
    logp = torch.log_softmax(logits_fn(theta), dim=-1)
    return logp[problem.prefix_index, problem.tokens].masked_fill(~problem.mask, 0.0)


def objective(problem: Problem, logits_fn: Callable, theta: torch.Tensor) -> torch.Tensor:
    """J(θ) = Σ_s P_θ(s) R(s), exact."""
    seq_logp = token_logprobs(problem, logits_fn, theta).sum(-1)
    return (seq_logp.exp() * problem.rewards).sum()


def true_gradient(problem: Problem, logits_fn: Callable, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(problem, logits_fn, theta), theta)
    return grad
