"""Off-policy rollouts (`trainer.staleness`): the delay queue, its anchors and its resume.

Expected values come from runs without the feature: a hand-written synchronous loop over
the same primitives (staleness 0), the checkpoint of the policy that should have sampled a
rollout (staleness d), or a run with a frozen policy (where staleness cannot matter).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import compose_config, kill_and_resume
from tests.train.test_loop import deterministic
from tic_grpo_cli.algorithms import ALGORITHMS
from tic_grpo_cli.data import build_task
from tic_grpo_cli.encoding import ChatPrompt
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.logprobs import completion_logprobs
from tic_grpo_cli.models import load_model_and_tokenizer
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.train.loop import seed_everything, train
from tic_grpo_cli.train.policy import Policy, lr_lambda
from tic_grpo_cli.train.rollout import PromptSampler, collect_rollout
from tic_grpo_cli.train.staleness import QueuedRollout, RolloutQueue, rollouts_needed
from tic_grpo_cli.train.state import rollout_seed
from tic_grpo_cli.train.update import policy_update

# Two steps a rollout at a high constant rate: a policy that moves visibly every step.
STALE_RUN = (
    "trainer.rollout_batch_size=4",
    "trainer.group_size=4",
    "trainer.minibatch_size=2",  # K = 2 optimizer steps per rollout
    "trainer.eval_every=0",
    "trainer.save_every=0",
    "trainer.log_every=2",
    "trainer.log_samples_every=0",
    "trainer.lr=1e-3",
    "trainer.lr_schedule=constant",
    "wandb.mode=disabled",
    "hardware.num_threads=1",
)


def step_rows(run_dir) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(
        str(sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "model.safetensors")
    )


def hand_loop(cfg, rollouts: int) -> dict[str, torch.Tensor]:
    """The synchronous loop written out from the primitives (sample, score, update), as
    train() ran before the queue existed; returns the final weights."""
    seed_everything(cfg.seed)
    model, tokenizer = load_model_and_tokenizer(cfg.model, torch.device("cpu"), torch.float32)
    frozen = None
    if cfg.algorithm.name == "grpo_no_is":
        import copy

        frozen = copy.deepcopy(model)
    tr = cfg.trainer
    optimizer = torch.optim.AdamW(model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay,
                                  betas=(tr.adam_beta1, tr.adam_beta2))  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tr))
    policy = Policy(model, tokenizer, optimizer, scheduler, frozen)
    task = build_task(cfg.dataset, tokenizer)
    train_split = task.split("train")
    sampler = PromptSampler(len(train_split), cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    for r in range(rollouts):
        generator.manual_seed(rollout_seed(cfg.seed, r, 0))
        examples = [train_split[i] for i in sampler.take(tr.rollout_batch_size)]
        rollout = collect_rollout(model, tokenizer, task, examples, cfg, generator)
        policy_update(policy, rollout, cfg, generator)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("algorithm", ["tic", "grpo", "grpo_no_is", "dppo"])
def test_staleness_0_is_the_synchronous_loop(tmp_path, algorithm):
    cfg = compose_config(
        *STALE_RUN, f"algorithm={algorithm}", "trainer.max_steps=6", "trainer.staleness=0"
    )
    train(cfg, tmp_path)
    expected = hand_loop(cfg, rollouts=3)
    got = final_weights(tmp_path)
    assert got.keys() <= expected.keys() and len(got) > 3  # tied weights are saved once
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
    rows = step_rows(tmp_path)
    assert [r["rollout"] for r in rows] == [1, 1, 2, 2, 3, 3]
    assert not any("staleness" in r or k.startswith("behaviour/") for r in rows for k in r)


def test_with_a_frozen_policy_staleness_changes_nothing_but_the_lag(tmp_path):
    """lr = 0: every policy version is the initial one, so update u of a stale run trains
    exactly what update u of a synchronous run trains (the same rollout u: its prompts and
    sampling seed), and the logged metrics agree except the staleness columns."""
    frozen = ("trainer.lr=1e-30", "trainer.max_steps=8")
    train(compose_config(*STALE_RUN, *frozen, "trainer.staleness=0"), tmp_path / "sync")
    train(compose_config(*STALE_RUN, *frozen, "trainer.staleness=3"), tmp_path / "stale")
    sync, stale = step_rows(tmp_path / "sync"), step_rows(tmp_path / "stale")
    assert [r["staleness"] for r in stale] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [r["rollout/index"] for r in stale] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(r["mismatch/kl"] == pytest.approx(0, abs=1e-9) for r in stale[::2])
    lag = ("staleness", "rollout/index", "behaviour/")
    assert deterministic(sync) == [
        {k: v for k, v in r.items() if not k.startswith(lag)} for r in deterministic(stale)
    ]


def test_each_rollout_is_sampled_by_the_policy_d_updates_old(tmp_path):
    """At update u (d = 2, K = 2) the logged mean log rho against mu of the first minibatch
    is what the checkpoints give: completions sampled from rollout u's prompts and seed by
    the policy after update u - 2, scored by the policy after update u. Sampled by the
    policy one update newer, the same figure differs."""
    cfg = compose_config(*STALE_RUN, "trainer.staleness=2", "trainer.max_steps=10", "trainer.save_every=2",
                   "trainer.keep_last=0", "trainer.keep_every=0", "trainer.lr=3e-3")  # fmt: skip
    train(cfg, tmp_path)
    rows = step_rows(tmp_path)
    assert [r["staleness"] for r in rows[::2]] == [0, 1, 2, 2, 2]
    first_step = {r["rollout/index"]: r for r in rows[::2]}
    cpu = torch.device("cpu")
    task = build_task(cfg.dataset, load_model_and_tokenizer(cfg.model, cpu, torch.float32)[1])
    split = task.split("train")
    sampler = PromptSampler(len(split), cfg.seed)
    batches = [[split[i] for i in sampler.take(4)] for _ in range(5)]

    def policy_after(update: int):
        model_cfg = cfg.model.copy()
        model_cfg.name_or_path = str(tmp_path / "checkpoints" / f"step_{2 * update}")
        return load_model_and_tokenizer(model_cfg, cpu, torch.float32)

    def mean_log_rho(u: int, sampled_after: int) -> float:
        model, tokenizer = policy_after(sampled_after)
        generator = torch.Generator().manual_seed(rollout_seed(cfg.seed, u, 0))
        gen = collect_rollout(model, tokenizer, task, batches[u], cfg, generator).gen
        rows = torch.arange(8)  # the first minibatch: prompts 0 and 1, 4 completions each
        current, _ = policy_after(u)
        with torch.no_grad():
            logprobs = completion_logprobs(current, gen.prompt_ids[rows], gen.prompt_mask[rows],
                                           gen.completion_ids[rows], gen.completion_mask[rows],
                                           temperature=gen.temperature)  # fmt: skip
        mask = gen.completion_mask[rows]
        return ((logprobs - gen.logprobs[rows]) * mask).sum(-1).mean().item()

    for u in (3, 4):
        logged = first_step[u]["behaviour/log_rho_mean"]
        assert logged == pytest.approx(mean_log_rho(u, u - 2), abs=1e-4)
        assert abs(logged - mean_log_rho(u, u - 1)) > 1e-3


def test_no_rollout_is_trained_twice_and_none_is_wasted(tmp_path):
    # 7 steps at K = 2: 4 rollouts, the last one only half trained.
    summary = train(
        compose_config(*STALE_RUN, "trainer.staleness=4", "trainer.max_steps=7"), tmp_path
    )
    rows = step_rows(tmp_path)
    assert len(rows) == 7 and summary["steps"] == 7
    assert [r["rollout/index"] for r in rows] == [0, 0, 1, 1, 2, 2, 3]
    assert summary["rollouts"] == 4 == rollouts_needed(7, 2)
    # Every rollout was sampled before the first update (d = 4 >= 4 rollouts): version 0.
    assert [r["staleness"] for r in rows] == [0, 0, 1, 1, 2, 2, 3]


def test_behaviour_and_proximal_anchors(tmp_path):
    """Anchored at mu (old_logprobs=sampler), the first step's ratio is pi_theta / mu, which
    a stale rollout moves away from 1; anchored at the proximal policy it is exactly 1."""
    common = ("trainer.staleness=2", "trainer.max_steps=8", "algorithm=tic", "trainer.lr=3e-3")
    train(compose_config(*STALE_RUN, *common, "trainer.old_logprobs=sampler"), tmp_path / "mu")
    train(
        compose_config(*STALE_RUN, *common, "algorithm.rollout_correction=seq_tis"),
        tmp_path / "prox",
    )
    mu, prox = step_rows(tmp_path / "mu"), step_rows(tmp_path / "prox")
    stale_mu = [r for r in mu if r["minibatch"] == 0 and r["staleness"] == 2]
    assert stale_mu and all(r["ratio/max"] != 1.0 for r in stale_mu)
    assert all(r["ratio_diag/kl_old"] == pytest.approx(r["behaviour/kl"]) for r in mu)
    stale_prox = [r for r in prox if r["minibatch"] == 0 and r["staleness"] == 2]
    assert all(r["ratio/max"] == 1.0 for r in stale_prox)
    assert all(r["mismatch/kl"] > 1e-6 and r["behaviour/kl"] > 1e-6 for r in stale_prox)
    # Update 0 trains rollout 0 with the policy that sampled it: only float rounding.
    assert prox[0]["mismatch/abs_logprob_diff_max"] < 1e-4


def test_queue_checkpoint_round_trip_and_refusals():
    cfg = compose_config(*STALE_RUN)
    model, tokenizer = load_model_and_tokenizer(cfg.model, torch.device("cpu"), torch.float32)
    task = build_task(cfg.dataset, tokenizer)
    # A chat template's prompts are a str subclass, which weights_only=True would refuse.
    examples = [{**task.split("train")[i], "prompt": ChatPrompt(task.split("train")[i]["prompt"])}
                for i in range(4)]  # fmt: skip
    rollout = collect_rollout(model, tokenizer, task, examples, cfg, torch.Generator())
    queue = RolloutQueue(2)
    queue.push(QueuedRollout(rollout, 5, 3, 0.25, 1))
    from tic_grpo_cli.runtime.distributed import SINGLE

    saved = queue.state(SINGLE)
    buffer = __import__("io").BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # what resume reads: plain data only
    again = RolloutQueue(2)
    again.restore(loaded, SINGLE, "ckpt")
    (item,) = again.items
    assert (item.index, item.version, item.seconds, item.epoch) == (5, 3, 0.25, 1)
    assert item.rollout.gen.texts == rollout.gen.texts
    assert item.rollout.examples == rollout.examples
    assert torch.equal(item.rollout.gen.logprobs, rollout.gen.logprobs)
    assert torch.equal(item.rollout.advantages, rollout.advantages)
    with pytest.raises(UserError, match=r"trainer\.staleness=2 on 1 rank"):
        RolloutQueue(3).restore(loaded, SINGLE, "ckpt")
    assert not queue.ready(generation_done=False) and queue.ready(generation_done=True)


def test_resume_after_sigkill_matches_an_uninterrupted_stale_run(tmp_path):
    overrides = [*STALE_RUN, "trainer.staleness=2", "trainer.max_steps=14", "trainer.save_every=4",
                 "trainer.eval_every=4", "trainer.eval_limit=16"]  # fmt: skip
    # Killed past the step-4 checkpoint, whose queue holds two rollouts not yet trained.
    full, killed = kill_and_resume(tmp_path, overrides)
    a = deterministic(read_jsonl(full / "metrics.jsonl"))
    b = deterministic(read_jsonl(killed / "metrics.jsonl"))
    assert a == b


def test_resume_with_another_staleness_is_refused(tmp_path):
    train(
        compose_config(
            *STALE_RUN, "trainer.staleness=2", "trainer.max_steps=4", "trainer.save_every=2"
        ),
        tmp_path,
    )
    cfg = compose_config(
        *STALE_RUN, "trainer.staleness=1", "trainer.max_steps=8", f"resume={tmp_path}"
    )
    with pytest.raises(UserError, match=r"^trainer.staleness=1 differs from the checkpoint"):
        train(cfg, tmp_path)


def test_negative_staleness_is_refused_in_one_line():
    from tic_grpo_cli.config.validation import validate_train

    with pytest.raises(Exception, match=r"trainer.staleness.*must be >= 0"):
        validate_train(compose_config(*STALE_RUN, "trainer.staleness=-1"))


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithm_trains_on_stale_rollouts(tmp_path, algorithm):
    summary = train(compose_config(*STALE_RUN, f"algorithm={algorithm}", "trainer.staleness=1",
                             "trainer.max_steps=4"), tmp_path)  # fmt: skip
    rows = step_rows(tmp_path)
    assert len(rows) == 4 and summary["nonfinite_total"] == 0
    assert all(r["loss"] is not None and r["grad_norm"] is not None for r in rows)
