"""What tests/test_gpu.py and the GPU check's `mismatch` part (scripts/gpu_check.py) share:
one rollout sampled by the trainer's own functions, and how far the sampler's log-probs of
its tokens sit from the trainer's."""

from __future__ import annotations

import torch

from tests.conftest import compose_config
from tic_grpo_cli.data import build_task
from tic_grpo_cli.models import load_model_and_tokenizer
from tic_grpo_cli.train.rollout import collect_rollout
from tic_grpo_cli.train.update import batch_logprobs

# The embedded models and the tasks they were built for.
PRESETS = {"tiny": (), "tiny_chain": ("experiment=chain",)}


def logprob_gap(
    model_name: str, device: torch.device, amp: bool, prompts: int = 32, seed: int = 0
) -> dict[str, float]:
    """Sample `prompts` x G completions as `collect_rollout` does (under bf16 autocast when
    `amp`), score them again with the trainer's `batch_logprobs` (same autocast, eval mode),
    and measure |sampler - trainer| per token and per sequence (the sum, what TIC-GRPO's
    trajectory ratio sees)."""
    precision = "bf16" if amp else "none"
    cfg = compose_config("wandb.mode=disabled", *PRESETS[model_name], f"hardware.mixed_precision={precision}",
                        f"seed={seed}")  # fmt: skip
    torch.manual_seed(seed)
    model, tokenizer = load_model_and_tokenizer(
        cfg.model, device, torch.float32, cfg.hardware.mixed_precision
    )
    task = build_task(cfg.dataset, tokenizer)
    train = task.split("train")
    examples = [train[i] for i in range(prompts)]
    generator = torch.Generator().manual_seed(seed)
    rollout = collect_rollout(model, tokenizer, task, examples, cfg, generator)
    gen = rollout.gen
    model.eval()
    with torch.no_grad():
        rows = torch.arange(len(gen.texts))
        trainer = batch_logprobs(model, gen, rows, cfg.trainer.micro_batch_size, amp)
    mask = gen.completion_mask.to(trainer.device)
    diff = (gen.logprobs.to(trainer.device) - trainer).abs() * mask
    per_sequence = ((gen.logprobs.to(trainer.device) - trainer) * mask).sum(-1).abs()
    return {
        "max_abs": diff.max().item(),
        "mean_abs": (diff.sum() / mask.sum()).item(),
        "sequence_sum_max_abs": per_sequence.max().item(),
        "tokens": int(mask.sum()),
        "sequences": len(gen.texts),
        "device": str(device),
        "sampled_on": str(gen.completion_ids.device),
    }
