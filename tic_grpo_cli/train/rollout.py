"""One rollout's data, outer loop step 1 of the TIC-GRPO paper (arXiv 2508.02833): which
prompts it takes (`PromptSampler`); G completions per prompt from the current policy, scored, rewards
group-normalised into advantages (`collect_rollout`); every rank's share gathered for
reporting (`gather_rollout`); the rollout's metrics and the samples shown on the console
(`rollout_metrics`, `pick_samples`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from tic_grpo_cli.algorithms import group_advantages
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runtime import distributed
from tic_grpo_cli.runtime.distributed import Dist
from tic_grpo_cli.sampling import Generation, generate


@dataclass
class Rollout:
    """A scored batch: G completions per prompt, their rewards and group advantages."""

    gen: Generation
    examples: list[dict[str, Any]]
    rewards: Tensor  # [N*G]
    advantages: Tensor  # [N*G]
    correct: Tensor  # [N*G] bool
    terms: dict[str, list[float]]


class PromptSampler:
    """Walks the train split in a seeded shuffled order, epoch after epoch; its position is
    part of the checkpoint so a resumed run sees the same prompts."""

    def __init__(self, size: int, seed: int, epoch: int = 0, position: int = 0):
        if size == 0:
            raise UserError("the train split is empty: nothing to train on")
        self.size, self.seed, self.epoch, self.position = size, seed, epoch, position

    def _order(self) -> list[int]:
        order = list(range(self.size))
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            order = self._order()
            chunk = order[self.position : self.position + n - len(out)]
            out += chunk
            self.position += len(chunk)
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


def collect_rollout(
    model, tokenizer, task, examples, cfg: DictConfig, generator, dist: Dist = distributed.SINGLE
) -> Rollout:
    """Sample G completions per prompt from the current policy, score, and compute advantages."""
    tr, alg = cfg.trainer, cfg.algorithm
    group = tr.group_size
    repeated = [ex for ex in examples for _ in range(group)]
    model.eval()
    device_type = next(model.parameters()).device.type
    with torch.autocast(
        device_type, torch.bfloat16, enabled=cfg.hardware.mixed_precision == "bf16"
    ):
        gen = generate(
            model,
            tokenizer,
            [ex["prompt"] for ex in repeated],
            tr.max_completion_length,
            temperature=tr.temperature,
            top_p=tr.top_p,
            top_k=tr.top_k,
            generator=generator,
            batch_size=tr.generation_batch_size,
            skip_special_tokens=cfg.dataset.reward.skip_special_tokens,
        )
    model.train()
    scored = task.score(gen.texts, repeated)
    rewards = torch.tensor(scored.rewards, dtype=torch.float32)
    lengths = gen.completion_mask.sum(-1).float().clamp(min=1).cpu()
    all_rewards, all_lengths, mine = rewards, lengths, slice(None)
    if alg.batch_std and dist.active:  # the std of the whole batch, which the ranks share out
        all_rewards, all_lengths = (torch.cat(t) for t in zip(
            *dist.all_gather_object((rewards, lengths)), strict=True))  # fmt: skip
        mine = slice(dist.rank * len(rewards), (dist.rank + 1) * len(rewards))
    advantages = group_advantages(
        all_rewards.view(-1, group),
        normalize_std=alg.normalize_std,
        batch_std=alg.batch_std,
        lengths=all_lengths.view(-1, group) if alg.length_corrected_advantage else None,
    ).reshape(-1)[mine]
    return Rollout(
        gen,
        repeated,
        rewards,
        advantages,
        torch.tensor(scored.correct, dtype=torch.bool),
        scored.terms,
    )


def gather_rollout(rollout: Rollout, dist: Dist, group: int) -> Rollout:
    """Every rank's share as one batch in global prompt order (rank r sampled prompts r,
    r + W, r + 2W, ...), for metrics and samples. It carries what those read (examples,
    texts, completion masks, rewards); token ids and log-probs stay on their rank (empty)."""
    if not dist.active:
        return rollout
    gen = rollout.gen
    parts = dist.all_gather_object((
        rollout.examples, gen.texts, gen.completion_mask.cpu(), gen.finished.cpu(),
        rollout.rewards, rollout.advantages, rollout.correct, rollout.terms,
    ))  # fmt: skip
    examples, texts, masks, finished, rewards, advantages, correct, terms = zip(*parts, strict=True)
    per_rank = len(rollout.rewards)
    # Row g of global prompt p is row (p // W) * G + g of rank p % W's share.
    order = [
        (p % dist.world_size) * per_rank + (p // dist.world_size) * group + g
        for p in range(dist.world_size * per_rank // group)
        for g in range(group)
    ]

    def rows(values: tuple[list, ...]) -> list:
        flat = [row for value in values for row in value]
        return [flat[i] for i in order]

    def stack(values: tuple[torch.Tensor, ...]) -> torch.Tensor:
        width = max(v.shape[-1] for v in values)  # completion masks differ in width by rank
        return torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[-1])) if v.dim() == 2
                          else v for v in values])[order]  # fmt: skip

    mask = stack(masks)
    empty = mask[:, :0]
    merged = Generation(empty.long(), empty, empty.long(), mask, empty.float(), rows(texts),
                        stack(finished))  # fmt: skip
    return Rollout(
        merged,
        rows(examples),
        stack(rewards),
        stack(advantages),
        stack(correct),
        {name: rows(tuple(t[name] for t in terms)) for name in terms[0]},
    )


def rollout_metrics(rollout: Rollout, group: int) -> dict[str, float]:
    """What one rollout logs: reward, accuracy and length statistics over its N*G rows,
    the fraction of groups whose rewards are all equal (advantage 0), and each reward term."""
    rewards = rollout.rewards.view(-1, group)
    lengths = rollout.gen.completion_mask.sum(-1).float()
    out = {
        "reward/mean": rollout.rewards.mean().item(),
        "reward/std": rollout.rewards.std().item() if len(rollout.rewards) > 1 else 0.0,
        "accuracy": rollout.correct.float().mean().item(),
        "completion_length/mean": lengths.mean().item(),
        "completion_length/max": lengths.max().item(),
        "truncated_fraction": 1.0 - rollout.gen.finished.float().mean().item(),
        "frac_zero_std_groups": (rewards.std(-1) == 0).float().mean().item(),
        "advantage/abs_mean": rollout.advantages.abs().mean().item(),
    }
    for name, values in rollout.terms.items():
        out[f"reward/{name}"] = float(np.mean(values)) if values else 0.0
    return out


def pick_samples(rollout: Rollout, count: int = 4) -> list[dict[str, Any]]:
    """`count` rows spread over the rollout, as prompt/answer/completion/reward/advantage."""
    picks = range(0, len(rollout.examples), max(1, len(rollout.examples) // count))
    return [
        {
            "prompt": rollout.examples[i]["prompt"],
            "answer": str(rollout.examples[i]["answer"]),
            "completion": rollout.gen.texts[i],
            "reward": rollout.rewards[i].item(),
            "advantage": rollout.advantages[i].item(),
        }
        for i in list(picks)[:count]
    ]
