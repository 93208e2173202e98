"""The training core on a CUDA device: placement, bf16 autocast, the sampler's and the
trainer's log-probs, resume from a GPU checkpoint, CUDA RNG state. Marked `gpu`: skipped
without CUDA (conftest.py) and left out of `make test`; `scripts/gpu_check.sh` runs them on
a lent GPU (docs/scaling.md, "GPU check")."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from tests.conftest import SMALL_RUN, compose_config
from tests.gpu_helpers import logprob_gap
from tests.train.test_loop import deterministic
from tic_grpo_cli.data import build_task
from tic_grpo_cli.models import load_model_and_tokenizer, resolve_device, resolve_dtype
from tic_grpo_cli.runs.checkpoint import load_trainer_state
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.train.loop import train
from tic_grpo_cli.train.policy import Policy
from tic_grpo_cli.train.rollout import collect_rollout
from tic_grpo_cli.train.state import rng_state, set_rng_state
from tic_grpo_cli.train.update import policy_update

pytestmark = pytest.mark.gpu

# cuBLAS reads this when it first makes a handle: set at collection, before any test runs a
# matmul, so the resume test can ask for deterministic kernels.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

CUDA = torch.device("cuda")


def gpu_cfg(*overrides: str):
    return compose_config(*SMALL_RUN, "hardware=gpu", *overrides)


def test_hardware_gpu_puts_model_rollout_and_optimizer_state_on_cuda():
    cfg = gpu_cfg()
    device = resolve_device(cfg.hardware)
    dtype = resolve_dtype(cfg.model, cfg.hardware, device)
    assert device.type == "cuda" and dtype == torch.float32  # fp32 master weights
    model, tokenizer = load_model_and_tokenizer(cfg.model, device, dtype, "bf16")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    task = build_task(cfg.dataset, tokenizer)
    examples = [task.train[i] for i in range(4)]
    rollouts = [
        collect_rollout(model, tokenizer, task, examples, cfg, torch.Generator().manual_seed(3))
        for _ in range(2)
    ]
    gen = rollouts[0].gen
    assert gen.completion_ids.device.type == "cuda" and gen.logprobs.device.type == "cuda"
    # A CPU generator seeds the CUDA noise: the same seed samples the same completions.
    assert torch.equal(gen.completion_ids, rollouts[1].gen.completion_ids)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    rollout = rollouts[0]
    rollout.advantages = torch.linspace(-1.5, 1.5, len(rollout.advantages))
    rows = policy_update(Policy(model, tokenizer, optimizer, scheduler), rollout, cfg,
                         torch.Generator().manual_seed(0))  # fmt: skip
    assert not any(r["nonfinite"] for r in rows)
    states = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    assert states and {t.device.type for t in states if t.dim() > 0} == {"cuda"}
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_bf16_autocast_computes_in_bf16_and_trains_fp32_weights(tmp_path):
    cfg = gpu_cfg()
    model, tokenizer = load_model_and_tokenizer(cfg.model, CUDA, torch.float32, "bf16")
    ids = tokenizer(["12+34="], return_tensors="pt")["input_ids"].to(CUDA)
    with torch.autocast("cuda", torch.bfloat16):
        logits = model(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.float32}

    summary = train(gpu_cfg("trainer.max_steps=4", "trainer.eval_every=4"), tmp_path)
    assert summary["nonfinite_total"] == 0 and 0 <= summary["final/eval_accuracy"] <= 1
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "checkpoints" / "step_4" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}


# Per-token |log pi_sampler - log pi_trainer| allowed on CUDA. float32: rounding only (the
# CPU test allows 1e-4; cuBLAS may reduce a one-token decode in another order than the full
# forward). bf16 autocast: activations carry 8 significant bits, and the KV-cache decode and
# the full forward round at different places; a real bug (a shifted position, padding seen)
# moves most tokens by O(1). scripts/gpu_check.py's `mismatch` part records the values.
TOLERANCE = {False: {"max_abs": 1e-3, "mean_abs": 1e-4}, True: {"max_abs": 0.5, "mean_abs": 0.05}}


@pytest.mark.parametrize("model", ["tiny", "tiny_chain"])
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_sampler_and_trainer_logprobs_agree_on_cuda(model, amp):
    gap = logprob_gap(model, CUDA, amp)
    assert gap["sampled_on"].startswith("cuda")
    for key, bound in TOLERANCE[amp].items():
        assert gap[key] < bound, f"{key} = {gap[key]:.3g} >= {bound} ({gap})"


def test_a_checkpoint_saved_on_gpu_resumes_exactly(tmp_path):
    """Kill-free version of test_train's SIGKILL test: a copy of the run dir cut back to its
    step-4 checkpoint and resumed must log what the uninterrupted run logged."""
    overrides = ("trainer.max_steps=8", "trainer.save_every=4", "trainer.eval_every=4")
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    # Some CUDA backward kernels (memory-efficient attention, scatter-adds) accumulate with
    # atomics: run-to-run rounding would differ, and with sampling, so would whole runs.
    # Strict, not warn_only: under warn_only, SDPA keeps its non-deterministic backward; an
    # op with no deterministic kernel then fails the test naming itself.
    torch.use_deterministic_algorithms(True)
    try:
        full, again, resumed = (tmp_path / d for d in ("full", "again", "resumed"))
        train(gpu_cfg(*overrides), full)
        train(gpu_cfg(*overrides), again)
        shutil.copytree(full, resumed)
        shutil.rmtree(resumed / "checkpoints" / "step_8")
        (resumed / "summary.json").unlink()
        train(gpu_cfg(*overrides, "resume=auto"), resumed)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
    a, b, c = (deterministic(read_jsonl(d / "metrics.jsonl")) for d in (full, again, resumed))
    assert a == b, "two uninterrupted GPU runs of one seed differ: CUDA nondeterminism, not resume"
    assert [r["step"] for r in c if "loss" in r] == list(range(1, 9))
    assert c == a
    assert "cuda" in load_trainer_state(full / "checkpoints" / "step_4")["rng"]


def test_cuda_rng_state_is_saved_and_restored(tmp_path):
    """The contract of train/state.py: with CUDA in use, `rng_state` holds a "cuda" entry
    that survives the checkpoint's file format, and `set_rng_state` puts it back."""
    generator = torch.Generator().manual_seed(0)
    torch.cuda.manual_seed_all(123)
    torch.zeros(1, device=CUDA)  # "when CUDA is in use": initialised, as a training run has it
    state = rng_state(generator)
    assert "cuda" in state
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)  # as checkpoints load
    expected = torch.rand(16, device=CUDA)
    torch.rand(1000, device=CUDA)  # move the stream on
    set_rng_state(loaded, generator)
    assert torch.equal(torch.rand(16, device=CUDA), expected)


def test_lora_adapters_train_on_cuda():
    cfg = gpu_cfg("model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8",
                  "model.lora.dropout=0.0")  # fmt: skip
    model, tokenizer = load_model_and_tokenizer(cfg.model, CUDA, torch.float32, "bf16")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.is_cuda for n, p in trainable.items())
    task = build_task(cfg.dataset, tokenizer)
    rollout = collect_rollout(model, tokenizer, task, [task.train[i] for i in range(4)], cfg,
                              torch.Generator().manual_seed(0))  # fmt: skip
    rollout.advantages = torch.linspace(-1.5, 1.5, len(rollout.advantages))
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    rows = policy_update(Policy(model, tokenizer, optimizer, scheduler), rollout, cfg,
                         torch.Generator().manual_seed(0))  # fmt: skip
    assert not any(r["nonfinite"] for r in rows)
    assert any(not torch.equal(before[n], p) for n, p in trainable.items() if "lora_B" in n)
