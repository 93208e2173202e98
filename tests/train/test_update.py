"""The inner loop: old log-probs taken at theta_old, minibatch steps, and the sampler-trainer
mismatch measured and corrected there."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.conftest import SMALL_RUN, compose_config
from tic_grpo_cli.data import build_task
from tic_grpo_cli.models import load_model_and_tokenizer
from tic_grpo_cli.train.policy import Policy
from tic_grpo_cli.train.rollout import collect_rollout
from tic_grpo_cli.train.update import policy_update

# --- in the inner loop ------------------------------------------------------------------


def test_temperature_07_sampler_and_trainer_agree_and_ratios_start_at_1():
    cfg = compose_config(*SMALL_RUN, "algorithm=grpo", "trainer.temperature=0.7")
    model, rollout, generator = small_rollout(cfg)
    assert rollout.gen.temperature == 0.7
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    rows = policy_update(
        Policy(model, None, optimizer, scheduler, None, None), rollout, cfg, generator
    )
    assert rows[0]["ratio/max"] == 1.0 and rows[0]["ratio/mean"] == 1.0
    assert rows[0]["stats/ratio_min"] == 1.0
    # The KV-cache sampler and the training forward: float32 rounding, no more.
    assert rows[0]["mismatch/abs_logprob_diff_max"] < 1e-5
    assert rows[0]["mismatch/kl"] < 1e-10


def shifted_rollout(cfg):
    """A rollout whose sampler log-probs are the true ones minus 0.5 on every token of the
    odd completions: d = log pi_old - log pi_sampler = 0.5 there, 0 elsewhere."""
    model, rollout, generator = small_rollout(cfg)
    gen = rollout.gen
    odd = (torch.arange(len(gen.logprobs)) % 2 == 1)[:, None] & gen.completion_mask
    gen.logprobs = gen.logprobs - 0.5 * odd
    assert gen.completion_mask.sum(-1).min() >= 1
    return model, rollout, generator, odd


def first_step(cfg, rollout, model, generator):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = RecordingOptimizer(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    rows = policy_update(
        Policy(model, None, optimizer, scheduler, None, None), rollout, cfg, generator
    )
    model.load_state_dict(state)
    return rows, optimizer.applied[0]


def test_known_mismatch_is_measured_and_seq_mis_drops_those_completions():
    overrides = ("algorithm=grpo", "trainer.max_grad_norm=0")
    cfg = compose_config(*SMALL_RUN, *overrides, "algorithm.rollout_correction=seq_mis")
    model, rollout, generator, odd = shifted_rollout(cfg)
    rows, dropped = first_step(cfg, rollout, model, generator)
    mask = rollout.gen.completion_mask
    m = rows[0]
    assert m["mismatch/abs_logprob_diff_mean"] == pytest.approx(
        0.5 * odd.sum().item() / mask.sum().item(), abs=1e-5
    )
    assert m["mismatch/abs_logprob_diff_max"] == pytest.approx(0.5, abs=1e-5)
    assert m["mismatch/kl"] == pytest.approx(
        (math.expm1(0.5) - 0.5) * odd.sum().item() / mask.sum().item(), rel=1e-4
    )
    # An odd completion of n tokens has sum d = 0.5 n: outside [-log 2, log 2] = [-0.69,
    # 0.69], so dropped, from 2 tokens on (C = 2, the default).
    long_odd = (odd.sum(-1) >= 2).sum().item()
    assert m["mismatch/corrected_fraction"] == pytest.approx(long_odd / len(mask))
    assert "mismatch/kl" not in rows[1]
    # The gradient of the step equals that of the same rollout with no correction and the
    # dropped completions' advantages set to 0.
    plain_cfg = compose_config(*SMALL_RUN, *overrides)
    dropped_rows = odd.sum(-1) >= 2
    rollout.advantages = torch.where(dropped_rows, 0.0, rollout.advantages)
    _, reference = first_step(plain_cfg, rollout, model, generator)
    for got, want in zip(dropped, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


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
    cfg = compose_config(
        *SMALL_RUN, "algorithm=grpo_no_is", "trainer.micro_batch_size=3", "trainer.max_grad_norm=0"
    )
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


@pytest.mark.parametrize("lr", [0.0, 0.5])
def test_old_logprobs_are_theta_old_and_skip_the_first_minibatch(lr, monkeypatch):
    from tic_grpo_cli.train import update as train_module

    # K = 4 / 1 = 4 minibatches of 4 rows, micro-batches of 3: chunks of 3 + 1 rows.
    cfg = compose_config(
        *SMALL_RUN, "algorithm=grpo", "trainer.minibatch_size=1", "trainer.micro_batch_size=3"
    )
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

    cfg = compose_config(*SMALL_RUN, "algorithm=grpo", "trainer.old_logprobs=sampler")
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
