"""Several processes on the CPU (gloo): the same update as one process, rank-0-only writing,
resume on another number of processes, FSDP, and the ddp/fsdp configs.

Equivalence is checked on the update, given one rollout: the sampler draws its noise for the
whole batch at once, so two ranks sampling half the prompts each draw other completions than
one process would (the same distribution, not the same tokens; docs/scaling.md). Given the
same rollout, K = 4 optimizer steps on 2 ranks must reproduce the single-process run.

Tolerances, against float32 rounding only. Ranks sum the same terms in another order (their
own micro-batches, then over ranks): ~1e-7 relative per term, a few 1e-6 on a loss whose
terms partly cancel. Loss and gradient norm must agree to 1e-5 relative (measured: 2.4e-6
over all cases and steps). Parameters: AdamW divides by sqrt(v), so for the rare coordinates
whose gradient is at the scale of its eps (1e-8) the rounding becomes a visible part of a
step: the largest gap must stay below lr/10 = 1e-5 (measured 2.9e-6) and fewer than 0.1% of
elements may differ by more than 1e-6 (measured 0.0006%). A wrong weighting or a missing
all-reduce moves most parameters by ~lr and fails both (as breaking the token-count average
does for the dapo cases). `pytest -s -k measured` prints the gaps.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import compose_config
from tic_grpo_cli.assets import TINY_DIR
from tic_grpo_cli.config.schema import ConfigError
from tic_grpo_cli.config.validation import validate_train
from tic_grpo_cli.data import build_task
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.models import load_model_and_tokenizer
from tic_grpo_cli.runs import policy_checkpoint
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.runtime import distributed, launch
from tic_grpo_cli.runtime.distributed import Dist
from tic_grpo_cli.sampling import Generation
from tic_grpo_cli.train.policy import Policy
from tic_grpo_cli.train.rollout import PromptSampler, Rollout, collect_rollout, gather_rollout
from tic_grpo_cli.train.update import policy_update

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2
CPU = torch.device("cpu")
SMALL = [
    "trainer.rollout_batch_size=8", "trainer.group_size=4", "trainer.minibatch_size=2",
    "trainer.micro_batch_size=3", "trainer.max_completion_length=6", "trainer.lr=1e-4",
    "wandb.mode=disabled", "hardware.num_threads=1", "hardware.device=cpu",
    "hardware.dtype=float32",
]  # fmt: skip
# Each case: (hardware, algorithm overrides). dapo aggregates over tokens (ranks hold different
# token counts), grpo_no_is copies gradients from a frozen model, kl adds a reference model.
CASES = {
    "ddp-tic": ("ddp", ["algorithm=tic"]),
    "ddp-grpo": ("ddp", ["algorithm=grpo"]),
    "ddp-dapo": ("ddp", ["algorithm=dapo"]),
    "ddp-grpo_no_is": ("ddp", ["algorithm=grpo_no_is"]),
    "ddp-grpo-kl": ("ddp", ["algorithm=grpo", "algorithm.kl_coef=0.1"]),
    "fsdp-tic": ("fsdp", ["algorithm=tic"]),
    "fsdp-dapo": ("fsdp", ["algorithm=dapo"]),
    "fsdp-grpo_no_is": ("fsdp", ["algorithm=grpo_no_is"]),
    "fsdp-grpo-kl": ("fsdp", ["algorithm=grpo", "algorithm.kl_coef=0.1"]),
}
RTOL = 1e-5  # loss and grad norm, relative
PARAM_ATOL = 1e-5  # a tenth of one step's update (lr = 1e-4)
SMALL_GAP, SHARE_OFF = 1e-6, 1e-3  # all but isolated elements (< 0.1%) agree to 1e-6
# Exact whatever the micro-batching. Not ratio/mean or clip_fraction: they are token means
# per micro-batch, weighted as the loss is, so they move with the chunking (in one process too).
ROW_KEYS = ("loss", "grad_norm", "ratio/max", "stats/kl")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """The shipped tiny model, or a random one of its architecture while it is not built."""
    if (TINY_DIR / "config.json").is_file():
        return "tiny"
    spec = importlib.util.spec_from_file_location(
        "build_tiny", ROOT / "scripts/build_tiny_model.py"
    )
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # its dataclasses look their module up
    spec.loader.exec_module(build)
    torch.manual_seed(0)
    tokenizer = build.build_tokenizer()
    out = tmp_path_factory.mktemp("tiny")
    build.build_model(tokenizer, build.Arch()).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ the update, 1 vs 2 ranks


def shard(rollout: Rollout, rank: int, world: int, group: int) -> Rollout:
    """Rank `rank`'s share as the trainer deals it: prompts rank, rank + world, ..."""
    prompts = len(rollout.rewards) // group
    rows = [p * group + g for p in range(rank, prompts, world) for g in range(group)]
    index = torch.tensor(rows)
    gen = rollout.gen
    part = Generation(
        gen.prompt_ids[index], gen.prompt_mask[index], gen.completion_ids[index],
        gen.completion_mask[index], gen.logprobs[index], [gen.texts[i] for i in rows],
        gen.finished[index], gen.temperature,
    )  # fmt: skip
    return Rollout(part, [rollout.examples[i] for i in rows], rollout.rewards[index],
                   rollout.advantages[index], rollout.correct[index],
                   {k: [v[i] for i in rows] for k, v in rollout.terms.items()})  # fmt: skip


def make_rollout(cfg) -> Rollout:
    model, tokenizer = load_model_and_tokenizer(cfg.model, device=CPU, dtype=torch.float32)
    task = build_task(cfg.dataset, tokenizer)
    examples = [task.split("train")[i] for i in range(cfg.trainer.rollout_batch_size)]
    rollout = collect_rollout(
        model, tokenizer, task, examples, cfg, torch.Generator().manual_seed(0)
    )
    # Advantages that differ inside every group, so every minibatch has a gradient whatever
    # the (possibly random) model's rewards.
    rollout.advantages = torch.linspace(-1.5, 1.5, len(rollout.rewards))
    return rollout


def run_update(cfg, rollout: Rollout, dist: Dist):
    """K optimizer steps, set up as train() does; returns rows, whole parameters, optimizer."""
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(
        cfg.model, device=CPU, dtype=dist.storage_dtype(torch.float32)
    )
    frozen = copy.deepcopy(model) if cfg.algorithm.name == "grpo_no_is" else None
    ref = None
    if cfg.algorithm.kl_coef > 0:
        ref, _ = load_model_and_tokenizer(cfg.model, device=CPU, dtype=torch.float32)
        ref.eval().requires_grad_(False)
    model, frozen, ref = (dist.wrap(m, torch.float32) for m in (model, frozen, ref))
    tr = cfg.trainer
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tr.lr,
                                  betas=(tr.adam_beta1, tr.adam_beta2))  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    rows = policy_update(Policy(model, None, optimizer, scheduler, frozen, ref), rollout, cfg,
                         torch.Generator().manual_seed(0), dist)  # fmt: skip
    params = {n: getattr(p, "full_tensor", lambda p=p: p)().detach().clone()
              for n, p in model.named_parameters()}  # fmt: skip
    return rows, params, (model, tokenizer, optimizer)


def _worker(rank: int, port: int, configs: dict, rollout: Rollout, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    results = {}
    for name, cfg in configs.items():
        dist = launch.setup(cfg.hardware)
        part = shard(rollout, dist.rank, dist.world_size, cfg.trainer.group_size)
        rows, params, (model, tokenizer, optimizer) = run_update(cfg, part, dist)
        results[name] = (rows, params)
        if name == "fsdp-tic":  # a sharded checkpoint, read back by one process in the test
            policy_checkpoint.save_checkpoint(
                dist, Path(out_dir), 4, model, tokenizer, optimizer, {"step": 4}, 1
            )
    # The other collectives: statistics reduce by their key's suffix.
    stats = {"a_max": float(rank), "b_min": float(rank), "c": float(rank), "d/max": -float(rank)}
    results["stats"] = dist.average_stats(stats)
    results["any"] = (dist.any(rank == 1), dist.any(False))
    gathered = gather_rollout(shard(rollout, dist.rank, WORLD, 4), dist, 4)
    results["gathered"] = (gathered.gen.completion_mask, gathered.gen.texts, gathered.advantages,
                           [e["prompt"] for e in gathered.examples])  # fmt: skip
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tiny_model, tmp_path_factory):
    """Every case run on one process (here) and on two (spawned, gloo), with one rollout."""
    configs = {name: compose_config(*SMALL, f"model.name_or_path={tiny_model}",
                                   f"hardware={hw}", *extra)
               for name, (hw, extra) in CASES.items()}  # fmt: skip
    torch.set_num_threads(1)
    rollout = make_rollout(next(iter(configs.values())))
    single = {name: run_update(cfg, rollout, distributed.SINGLE) for name, cfg in configs.items()}
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(free_port(), configs, rollout, str(out)), nprocs=WORLD, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return single, ranks, rollout, out


def param_gap(got: dict, want: dict) -> tuple[float, float]:
    """The largest absolute difference, and the share of elements off by more than SMALL_GAP."""
    diffs = torch.cat([(got[k] - want[k]).abs().flatten() for k in want])
    return diffs.max().item(), (diffs > SMALL_GAP).float().mean().item()


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_take_the_single_process_steps(two_ranks, name):
    single, ranks, _, _ = two_ranks
    rows, params, _ = single[name]
    assert len(rows) == 4  # K = 8 prompts / 2 per minibatch
    assert any(abs(r["loss"]) > 1e-4 for r in rows) and all(r["grad_norm"] > 1e-3 for r in rows)
    for rank_rows, rank_params in (rank[name] for rank in ranks):
        for got, want in zip(rank_rows, rows, strict=True):
            for key in ROW_KEYS:
                if key in want:
                    assert got[key] == pytest.approx(want[key], rel=RTOL, abs=1e-7), key
            assert got["nonfinite"] == want["nonfinite"]
        largest, share = param_gap(rank_params, params)
        assert largest < PARAM_ATOL and share < SHARE_OFF, (largest, share)


def test_ranks_hold_identical_parameters(two_ranks):
    _, ranks, _, _ = two_ranks
    for name in CASES:
        a, b = (rank[name][1] for rank in ranks)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_measured_gaps(two_ranks):
    """The numbers the tolerances are set against; `pytest -s` prints them."""
    single, ranks, _, _ = two_ranks
    loss = max(abs(g[k] - w[k]) / max(abs(w[k]), 1e-7) for name in CASES
               for g, w in zip(ranks[0][name][0], single[name][0], strict=True)
               for k in ("loss", "grad_norm"))  # fmt: skip
    params = {name: param_gap(ranks[0][name][1], single[name][1]) for name in CASES}
    print(
        f"\nMEASURED loss/grad_norm relative gap {loss:.1e}; parameters (largest absolute "
        f"gap, share above {SMALL_GAP}):",
        {k: f"{a:.1e}, {b:.1e}" for k, (a, b) in params.items()},
    )
    assert loss < RTOL


def test_stats_reduce_by_key_and_flags_agree(two_ranks):
    _, ranks, _, _ = two_ranks
    for rank in ranks:
        assert rank["stats"] == {"a_max": 1.0, "b_min": 0.0, "c": 0.5, "d/max": 0.0}
        assert rank["any"] == (True, False)


def test_gathered_rollout_is_the_global_batch_in_order(two_ranks):
    _, ranks, rollout, _ = two_ranks
    for rank in ranks:
        mask, texts, advantages, prompts = rank["gathered"]
        assert texts == rollout.gen.texts
        assert prompts == [e["prompt"] for e in rollout.examples]
        assert torch.equal(advantages, rollout.advantages)
        assert torch.equal(mask, rollout.gen.completion_mask)


def test_fsdp_checkpoint_is_a_plain_model_and_reloads_on_one_process(two_ranks):
    from transformers import AutoModelForCausalLM

    from tic_grpo_cli.runs import checkpoint as ckpt

    single, _, _, out = two_ranks
    path = ckpt.resolve_checkpoint(out)
    assert (path / policy_checkpoint.OPTIMIZER_DIR / ".metadata").is_file()
    _, want_params, (_, _, want_optimizer) = single["fsdp-tic"]
    exported = dict(AutoModelForCausalLM.from_pretrained(path).named_parameters())
    for key, value in want_params.items():
        assert (exported[key] - value).abs().max().item() < PARAM_ATOL, key
    model = AutoModelForCausalLM.from_pretrained(path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    saved = ckpt.load_trainer_state(path)
    policy_checkpoint.load_optimizer(distributed.SINGLE, model, optimizer, saved, path)
    got, want = optimizer.state_dict()["state"], want_optimizer.state_dict()["state"]
    assert set(got) == set(want)
    for i in want:
        torch.testing.assert_close(got[i]["exp_avg"], want[i]["exp_avg"], rtol=1e-4, atol=1e-7)
        assert float(got[i]["step"]) == float(want[i]["step"]) == 4


# ------------------------------------------------------------------ the CLI, end to end


def cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tic_grpo_cli", "train", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)  # fmt: skip


@pytest.mark.slow
def test_two_process_cli_run_then_resume_on_one(tiny_model, tmp_path):
    run = [f"model.name_or_path={tiny_model}", "trainer.rollout_batch_size=4",
           "trainer.group_size=4", "trainer.minibatch_size=2", "trainer.eval_every=2",
           "trainer.eval_limit=8", "trainer.save_every=2", "trainer.log_samples_every=2",
           "hardware.num_threads=1", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    # What the README says: `tic-grpo train hardware=ddp` starts the processes itself.
    two = cli(*run, "trainer.max_steps=4", "hardware=ddp", "hardware.device=cpu",
              "hardware.nproc_per_node=2")  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    # One writer: every step once, evaluations at 0, 2, 4.
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2, 4]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_4"
    # The global prompt order is the single-process one: samples are picked from the whole
    # batch (rows 0, N*G/4, ...), gathered from both ranks.
    cfg = compose_config(f"model.name_or_path={tiny_model}")
    _, tokenizer = load_model_and_tokenizer(cfg.model, device=CPU, dtype=torch.float32)
    train_split = build_task(cfg.dataset, tokenizer).split("train")
    first = [train_split[i]["prompt"] for i in PromptSampler(len(train_split), 0).take(4)]
    samples = [s["prompt"] for s in read_jsonl(tmp_path / "samples.jsonl") if s["step"] == 2]
    assert samples == first

    one = cli(*run, "trainer.max_steps=6", "resume=auto")
    assert one.returncode == 0, one.stderr[-3000:]
    resumed = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in resumed if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert resumed[: len(rows)] == rows


# ------------------------------------------------------------------ configs and set-up


@pytest.mark.parametrize("option,mode", [("ddp", "ddp"), ("fsdp", "fsdp")])
def test_distributed_configs_compose(option, mode):
    cfg = compose_config(f"hardware={option}")
    validate_train(cfg)
    assert cfg.hardware.distributed == mode and cfg.hardware.backend == "auto"
    assert cfg.hardware.nproc_per_node >= 2
    assert launch.needs_launch(cfg.hardware) == (not launch.under_torchrun())


@pytest.mark.parametrize(
    "override,key",
    [("hardware.backend=mpi", "hardware.backend"),
     ("hardware.nproc_per_node=0", "hardware.nproc_per_node")],
)  # fmt: skip
def test_bad_distributed_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        validate_train(compose_config("hardware=ddp", override))


def test_minibatch_must_split_evenly_over_ranks():
    with pytest.raises(UserError, match=r"trainer\.minibatch_size=3 .* \(2\)"):
        Dist(mode="ddp", world_size=2).share(3, "trainer.minibatch_size")


def test_gradient_buckets_keep_order_and_split_by_dtype():
    tensors = [torch.zeros(3), torch.zeros(4), torch.zeros(2, dtype=torch.float64), torch.zeros(5)]
    buckets = list(distributed._buckets(tensors, numel=6))
    assert [[t.numel() for t in b] for b in buckets] == [[3], [4], [2], [5]]
    assert [len(b) for b in distributed._buckets(tensors[:2], numel=7)] == [2]


def test_fsdp_on_a_cpu_without_stream_events_says_so(monkeypatch):
    class OldCpuStream:  # torch 2.6's torch.cpu.Stream: no record_event
        pass

    monkeypatch.setattr(torch.cpu, "Stream", OldCpuStream)
    fsdp = distributed.Dist("fsdp", 0, 2, 0, torch.device("cpu"))
    with pytest.raises(UserError, match=r"hardware=fsdp on the CPU needs a newer torch .*=ddp"):
        fsdp.wrap(torch.nn.Linear(2, 2), torch.float32)
