"""The training core end to end on the embedded tiny model, with sizes that take seconds."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from tic_grpo_cli.algorithms import ALGORITHMS
from tic_grpo_cli.config.schema import register_configs
from tic_grpo_cli.data import build_task
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.models import load_model_and_tokenizer
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.train.loop import train
from tic_grpo_cli.train.policy import Policy
from tic_grpo_cli.train.rollout import collect_rollout
from tic_grpo_cli.train.update import policy_update

SMALL = [
    "trainer.max_steps=8",
    "trainer.rollout_batch_size=4",
    "trainer.group_size=4",
    "trainer.minibatch_size=2",
    "trainer.eval_every=4",
    "trainer.eval_limit=16",
    "trainer.save_every=4",
    "trainer.log_every=2",
    "trainer.log_samples_every=4",
    "wandb.mode=disabled",
    "hardware.num_threads=1",
]
# Keys whose values depend on wall-clock time, not on the computation.
TIMING = ("time/", "throughput/")


def make_cfg(*overrides: str):
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose("train", overrides=[*SMALL, *overrides])


def deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def test_run_dir_contents_and_metric_keys(tmp_path):
    summary = train(make_cfg(), tmp_path)
    for name in ("metrics.jsonl", "samples.jsonl", "summary.json", "curves.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_8"
    assert (tmp_path / "checkpoints" / "step_8" / "model.safetensors").is_file()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    required = {
        "step",
        "epoch",
        "reward/mean",
        "reward/std",
        "accuracy",
        "loss",
        "grad_norm",
        "lr",
        "clip_fraction",
        "ratio/mean",
        "ratio/max",
        "completion_length/mean",
        "frac_zero_std_groups",
        "time/rollout_s",
        "time/update_s",
        "throughput/tokens_per_s",
    }
    assert required <= set(train_rows[0])
    eval_steps = [r["step"] for r in rows if "eval/accuracy" in r]
    assert eval_steps == [0, 4, 8]
    # Before the first update of each rollout, old and current log-probs are the same pass.
    assert all(r["ratio/max"] == 1.0 for r in train_rows if r["minibatch"] == 0)
    assert json.loads((tmp_path / "summary.json").read_text()) == pytest.approx(
        summary, nan_ok=True
    )
    assert summary["steps"] == 8 and 0 <= summary["final/eval_accuracy"] <= 1


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))  # every registered one
def test_every_algorithm_runs(tmp_path, algorithm):
    summary = train(
        make_cfg(
            f"algorithm={algorithm}",
            "trainer.max_steps=4",
            "trainer.eval_every=0",
            "trainer.save_every=0",
        ),
        tmp_path,
    )
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert len(rows) == 4 and summary["nonfinite_total"] == 0
    assert all(r["loss"] is not None and r["grad_norm"] is not None for r in rows)


def test_kl_term_loads_a_reference_model(tmp_path):
    train(
        make_cfg("algorithm.kl_coef=0.1", "trainer.max_steps=2", "trainer.eval_every=0"), tmp_path
    )
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert all("stats/kl" in r for r in rows)
    assert rows[0]["stats/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at first


def test_same_seed_same_metrics(tmp_path):
    cfg = make_cfg("trainer.max_steps=4", "trainer.eval_every=2")
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    a, b = (deterministic(read_jsonl(tmp_path / d / "metrics.jsonl")) for d in ("a", "b"))
    assert a == b


def test_a_fresh_run_in_a_used_dir_sets_the_earlier_rows_aside(tmp_path):
    cfg = make_cfg("trainer.max_steps=2", "trainer.eval_every=0", "trainer.save_every=0")
    train(cfg, tmp_path)
    first = read_jsonl(tmp_path / "metrics.jsonl")
    train(cfg, tmp_path)  # e.g. a sweep re-running an incomplete job, without resume
    second = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in second] == [r["step"] for r in first]  # one run, not two
    earlier = list(tmp_path.glob("metrics.earlier-*.jsonl"))
    assert len(earlier) == 1 and read_jsonl(earlier[0]) == first


def small_rollout(cfg):
    """The tiny model, a rollout of 4 prompts, and advantages that vary inside groups (so
    gradients are not zero)."""
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(
        cfg.model, device=torch.device("cpu"), dtype=torch.float32
    )
    task = build_task(cfg.dataset, tokenizer)
    generator = torch.Generator().manual_seed(0)
    rollout = collect_rollout(model, tokenizer, task, task.train[:4], cfg, generator)
    rollout.advantages = torch.linspace(-1.5, 1.5, len(rollout.advantages))
    return model, rollout, generator


class RecordingOptimizer(torch.optim.SGD):
    """SGD that keeps a copy of the gradient it applies at every step."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.applied: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.applied.append(
            [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]
        )
        return super().step(closure)


def no_is_gradient(model, rollout, rows, max_len):
    """The paper's no-IS gradient written out here: -mean_i 1/|s_i| sum_t log pi * A_i."""
    gen = rollout.gen
    ids = torch.cat([gen.prompt_ids[rows], gen.completion_ids[rows]], dim=1)
    attn = torch.cat([gen.prompt_mask[rows], gen.completion_mask[rows]], dim=1)
    pos = (attn.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn.long(), position_ids=pos).logits.float()
    p = gen.prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, p - 1 : -1], -1)
    token_logp = logp.gather(-1, gen.completion_ids[rows].unsqueeze(-1)).squeeze(-1)
    mask = gen.completion_mask[rows].float()
    per_seq = (token_logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    loss = -(per_seq * rollout.advantages[rows]).mean()
    model.zero_grad()
    loss.backward()
    return [q.grad.detach().clone() for q in model.parameters()]


def test_grpo_no_is_applies_gradients_taken_at_theta_old():
    # No gradient clipping, so the applied gradient is the raw one.
    cfg = make_cfg("algorithm=grpo_no_is", "trainer.micro_batch_size=3", "trainer.max_grad_norm=0")
    model, rollout, generator = small_rollout(cfg)
    theta_old = copy.deepcopy(model)
    frozen = copy.deepcopy(model)
    optimizer = RecordingOptimizer(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    policy_update(Policy(model, None, optimizer, scheduler, frozen, None), rollout, cfg, generator)
    assert len(optimizer.applied) == 2  # K = 4 prompts / 2 per minibatch
    second = torch.arange(8, 16)  # minibatch 2 = prompts 2, 3 = rows 8..15
    at_old = no_is_gradient(theta_old, rollout, second, cfg.trainer.max_completion_length)
    # The updated parameters after step 1, where a naive implementation would evaluate.
    after_first = copy.deepcopy(theta_old)
    with torch.no_grad():
        for p, g in zip(after_first.parameters(), optimizer.applied[0], strict=True):
            p -= 0.5 * g
    at_new = no_is_gradient(after_first, rollout, second, cfg.trainer.max_completion_length)
    applied = optimizer.applied[1]
    for got, old in zip(applied, at_old, strict=True):
        # float32 sums in another order (micro-batches of 3 rows): ~1e-7 absolute.
        torch.testing.assert_close(got, old, rtol=1e-4, atol=1e-6)
    gap = max((a - n).abs().max().item() for a, n in zip(applied, at_new, strict=True))
    assert gap > 1e-4, "the second minibatch's gradient must not be taken at the updated theta"


@pytest.mark.parametrize(
    "schedule,warmup,expected",
    [
        ("constant", 2, [0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
        ("wsd", 0, [1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]),  # (10 - step) / 4 once below 1
        ("wsd", 2, [0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]),
    ],
)
def test_lr_schedules(schedule, warmup, expected):
    from omegaconf import OmegaConf

    from tic_grpo_cli.train.policy import lr_lambda

    tr = OmegaConf.create(
        {"warmup_steps": warmup, "max_steps": 10, "lr_schedule": schedule, "decay_fraction": 0.4}
    )
    assert [lr_lambda(tr)(step) for step in range(10)] == pytest.approx(expected)


@pytest.mark.parametrize("lr", [0.0, 0.5])
def test_old_logprobs_are_theta_old_and_skip_the_first_minibatch(lr, monkeypatch):
    from tic_grpo_cli.train import update as train_module

    # K = 4 / 1 = 4 minibatches of 4 rows, micro-batches of 3: chunks of 3 + 1 rows.
    cfg = make_cfg("algorithm=grpo", "trainer.minibatch_size=1", "trainer.micro_batch_size=3")
    model, rollout, generator = small_rollout(cfg)
    no_grad_calls = []
    real = train_module.batch_logprobs

    def counting(model, gen, rows, micro, amp=False):
        if not torch.is_grad_enabled():
            no_grad_calls.append(rows.tolist())
        return real(model, gen, rows, micro, amp)

    monkeypatch.setattr(train_module, "batch_logprobs", counting)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    rows = policy_update(
        Policy(model, None, optimizer, scheduler, None, None), rollout, cfg, generator
    )
    # Minibatch 1 (rows 0..3) takes its old log-probs from its own training forward.
    assert no_grad_calls == [[4, 5, 6], [7], [8, 9, 10], [11], [12, 13, 14], [15]]
    assert rows[0]["ratio/max"] == 1.0 and rows[0]["ratio/mean"] == 1.0
    later = [r["ratio/max"] for r in rows[1:]]
    if lr == 0:  # the policy never moves: old log-probs are exactly the current ones
        assert later == [1.0, 1.0, 1.0]
    else:
        assert max(later) > 1.0


def test_old_logprobs_from_the_sampler_skip_the_pass(monkeypatch):
    from tic_grpo_cli.train import update as train_module

    cfg = make_cfg("algorithm=grpo", "trainer.old_logprobs=sampler")
    model, rollout, generator = small_rollout(cfg)
    real = train_module.batch_logprobs

    def no_grad_forbidden(*args, **kwargs):
        assert torch.is_grad_enabled(), "sampler mode must not run an old-log-prob forward"
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "batch_logprobs", no_grad_forbidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    rows = policy_update(
        Policy(model, None, optimizer, scheduler, None, None), rollout, cfg, generator
    )
    # The KV-cache sampler and the training forward agree to float32 rounding, no better.
    assert rows[0]["mismatch/abs_logprob_diff_max"] < 1e-4
    assert all(abs(r["ratio/max"] - 1.0) < 1e-4 for r in rows)


def test_nonfinite_updates_are_skipped_then_stop(tmp_path, monkeypatch):
    import tic_grpo_cli.train.update as train_module

    real = train_module.compute_policy_loss

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    cfg = make_cfg(
        "trainer.max_steps=8",
        "trainer.max_nonfinite_steps=3",
        "trainer.save_every=2",
        "trainer.eval_every=0",
    )
    monkeypatch.setattr(train_module, "compute_policy_loss", poisoned)
    with pytest.raises(UserError, match="non-finite"):
        train(cfg, tmp_path)
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["nonfinite"] for r in rows] == [True] * len(rows) and len(rows) >= 3
    assert not (tmp_path / "summary.json").exists()


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    overrides = [*SMALL, "trainer.max_steps=12", "trainer.save_every=4", "trainer.eval_every=4"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    base = [sys.executable, "-m", "tic_grpo_cli", "train", *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    subprocess.run(
        [*base, f"hydra.run.dir={full}"], check=True, env=env, capture_output=True, timeout=300
    )
    proc = subprocess.Popen(
        [*base, f"hydra.run.dir={killed}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    # Kill once rows past the step-4 checkpoint are logged, so resuming must drop them.
    while time.time() < deadline and not any(
        r.get("step", 0) > 4 for r in read_jsonl(killed / "metrics.jsonl")
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "step_4").is_dir()
    assert not (killed / "summary.json").exists()
    subprocess.run(
        [*base, f"hydra.run.dir={killed}", "resume=auto"],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    a = deterministic(read_jsonl(full / "metrics.jsonl"))
    b = deterministic(read_jsonl(killed / "metrics.jsonl"))
    assert a == b


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    """A scheduler's SIGTERM (SIGINT: tests/test_resume.py) exits 128 + 15, as a shell
    reports a command SIGTERM ended, not 2 (a bad command)."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tic_grpo_cli",
            "train",
            *SMALL,
            "trainer.max_steps=100000",
            "trainer.save_every=0",
            f"hydra.run.dir={tmp_path}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(
        "loss" in r for r in read_jsonl(tmp_path / "metrics.jsonl")
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("interrupted at step")
    assert "continue with: " in err and " train resume=" in err and "Traceback" not in err
    assert (tmp_path / "checkpoints" / "latest").is_file()


def test_resume_rejects_a_checkpoint_of_another_algorithm(tmp_path):
    train(make_cfg("trainer.max_steps=2", "trainer.eval_every=0"), tmp_path)
    with pytest.raises(UserError, match=r"algorithm\.name"):
        train(make_cfg("algorithm=grpo", f"resume={tmp_path}"), tmp_path / "other")


def test_missing_resume_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        train(make_cfg(f"resume={tmp_path / 'nope'}"), tmp_path)


def test_wandb_offline_run_holds_the_logged_keys(tmp_path):
    from wandb_records import wait_for_history_keys

    train(make_cfg("wandb.mode=offline", "trainer.max_steps=2", "trainer.eval_every=0"), tmp_path)
    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    expected = {"reward/mean", "loss", "clip_fraction", "ratio/max"}
    assert expected <= wait_for_history_keys(files[0], expected)


def test_checkpoint_dir_reloads_as_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train(make_cfg("trainer.max_steps=2", "trainer.eval_every=0"), tmp_path)
    path = Path(tmp_path / "checkpoints" / "step_2")
    assert AutoModelForCausalLM.from_pretrained(path) is not None
    assert AutoTokenizer.from_pretrained(path).pad_token is not None


def test_bf16_autocast_trains_float32_weights(tmp_path):
    # The `gpu` hardware option's numerics, exercised on the CPU.
    model_dtypes = []
    summary = train(
        make_cfg("hardware.mixed_precision=bf16", "trainer.max_steps=4", "trainer.eval_every=4"),
        tmp_path,
    )
    assert summary["nonfinite_total"] == 0
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "checkpoints" / "step_4" / "model.safetensors")
    model_dtypes = {t.dtype for t in weights.values()}
    assert model_dtypes == {torch.float32}


def test_a_data_error_comes_before_the_model_loads(tmp_path, monkeypatch):
    class NoModel:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr("tic_grpo_cli.models.AutoModelForCausalLM", NoModel)
    data = tmp_path / "six.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"{a}+1=", "answer": a + 1}) + "\n" for a in range(6))
    )
    cfg = make_cfg("dataset=jsonl", f"dataset.path={data}", f"dataset.cache_dir={tmp_path / 'c'}")
    with pytest.raises(UserError, match=r"dataset\.test_size: holding out 100 prompts leaves none"):
        train(cfg, tmp_path / "run")
