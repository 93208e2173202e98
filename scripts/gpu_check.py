"""The GPU check of issue #25, part by part: what `scripts/gpu_check.sh` runs once the
carried wheels are installed. Each part runs in its own process group under a time limit;
a part that fails or runs out of time is recorded and the next one runs. Everything lands in
one JSON (`OUT/gpu_check.json`, rewritten after every part) and the log beside it.

    python scripts/gpu_check.py --out DIR                 # on the GPU machine (via gpu_check.sh)
    python scripts/gpu_check.py --out DIR --dry-run       # here: CUDA parts on the CPU, shrunk
    python scripts/gpu_check.py --out DIR --only throughput,profile   # a re-run of some parts
    python scripts/gpu_check.py --record-cpu-reference    # rewrite the CPU figures (this machine)

The parts, in the order they run (the GPU budget is ~8 minutes in all, so the ones the issue
needs most come first; --budget stops starting parts once it is spent):

  env           device, driver, versions; a measured bf16 matmul rate and copy bandwidth
  pytest_gpu    the tests marked `gpu` (tests/test_gpu.py): placement, autocast, log-probs,
                resume from a GPU checkpoint, CUDA RNG state
  mismatch      sampler vs trainer log-probs on CUDA, measured (fp32 and bf16 autocast)
  train_*       `tic-grpo train hardware=gpu`: the default task (seeds 0 and 1, shortened)
                and `experiment=chain`, eval accuracy set against the CPU figures for the
                same seeds (scripts/gpu_check_cpu_reference.json)
  throughput    benchmarks/bench_vs_trl.py at Qwen2.5-0.5B's shape (random weights, a
                synthetic tokenizer of its vocabulary): ours vs TRL's GRPOTrainer, tokens/s
                of generation and of the update, peak GPU memory, MFU
  ddp, fsdp     `hardware=ddp` / `hardware=fsdp` with one rank (nccl)
  lora          `hardware=gpu model.lora.enabled=true`
  profile       benchmarks/bench_profile.py at the same shape: where our time goes on CUDA

In a dry run (`--dry-run`, no GPU needed) every part runs its CPU stand-in: the same code
paths with `hardware=cpu` (gloo for ddp/fsdp), a shrunken model and a few steps; the pytest
part collects the gpu tests and sees them skip. It proves the check has no typo, not that
CUDA works.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "scripts" / "gpu_check_cpu_reference.json"
BENCHMARKS = ROOT / "benchmarks"
# Dense bf16 tensor-core peak of the SXM parts (datasheet, no sparsity); the H200 has the
# H100's arithmetic, only more and faster memory. MFU is reported against this.
BF16_PEAK_TFLOPS = 989.0
# How far a GPU run's final eval accuracy may sit from the CPU run's of the same seed before
# the check flags it. Not a bound on rounding: bf16 autocast and other kernels sample other
# completions, so the runs share only the seed and the data order; the figure is about
# twice the spread seen between CPU seeds at these lengths plus 3 binomial standard errors
# on 500 test problems (~0.06).
ACCURACY_TOLERANCE = 0.10
# The dry run's time limits and budget are the GPU's times this: its CPU stand-ins are small,
# but on two cores shared with other jobs a 7-CPU-second part was seen taking 60 s of wall.
DRY_SLOWDOWN = 10


# --------------------------------------------------------------------------- the train runs


@dataclass(frozen=True)
class TrainRun:
    """One `tic-grpo train` whose accuracy is compared between the CPU and the GPU."""

    name: str
    overrides: tuple[str, ...]
    # The dry run's stand-in: the same command, a few steps on few problems.
    dry: tuple[str, ...] = (
        "trainer.max_steps=4", "trainer.eval_every=4", "trainer.eval_limit=16",
    )  # fmt: skip


TRAIN_RUNS = (
    # The default task, shortened from 2,800 steps: evaluations at 0, 200 and 400.
    TrainRun("default_seed0", ("trainer.max_steps=400", "trainer.eval_every=200", "seed=0")),
    TrainRun("default_seed1", ("trainer.max_steps=400", "trainer.eval_every=200", "seed=1")),
    # The long-horizon preset as it ships: 100 steps, evaluations at 0, 28, 52, 76, 100.
    TrainRun("chain_seed0", ("experiment=chain", "seed=0")),
)
# Every train command: no W&B, a quiet progress line, one metrics row per step as usual.
COMMON = ("wandb.mode=disabled",)


def train_command(python: str, overrides: list[str], run_dir: Path) -> list[str]:
    return [
        python, "-m", "tic_grpo_cli", "train", *COMMON, *overrides, f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


def read_run(run_dir: Path) -> dict[str, Any]:
    """summary.json and the eval curve of a finished run dir."""
    out: dict[str, Any] = {}
    summary = run_dir / "summary.json"
    if summary.is_file():
        out["summary"] = json.loads(summary.read_text())
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        out["eval_curve"] = [
            [r["step"], r["eval/accuracy"]] for r in rows if r.get("eval/accuracy") is not None
        ]
        out["steps_logged"] = sum("loss" in r for r in rows)
        out["nonfinite_total"] = max((r.get("nonfinite_total", 0) for r in rows), default=0)
    return out


# --------------------------------------------------------------------------- running parts


@dataclass
class Context:
    out: Path
    work: Path  # run dirs and models: not under OUT, whose files come back to the caller
    dry: bool
    python: str = sys.executable
    log: Any = None
    deadline: float = float("inf")
    results: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()


class PartFailed(Exception):
    """A part ran but did not do what it should; the message says what."""


def run(ctx: Context, argv: list[str], limit_s: float, env: dict[str, str] | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess:  # fmt: skip
    """Run `argv` in its own process group, its output appended to the log; kill the whole
    group (torchrun's ranks too) when `limit_s` passes. Raises PartFailed on a timeout or a
    non-zero exit, with the output's tail."""
    ctx.log.write(f"\n$ {' '.join(argv)}\n")
    ctx.log.flush()
    proc = subprocess.Popen(
        argv, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        ctx.log.write(out)
        raise PartFailed(f"timed out after {limit_s:.0f} s: {' '.join(argv[:6])} ...") from None
    ctx.log.write(out)
    ctx.log.flush()
    if proc.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        raise PartFailed(f"exit code {proc.returncode}: {' '.join(argv[:6])} ...\n{tail}")
    return subprocess.CompletedProcess(argv, 0, out, "")


def last_json(stdout: str) -> dict[str, Any]:
    """The last line of a worker's output that is a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise PartFailed("the worker printed no JSON result")


# --------------------------------------------------------------------------- the parts


def part_env(ctx: Context, limit: float) -> dict[str, Any]:
    info = last_json(run(ctx, [ctx.python, __file__, "--worker", "env"], limit).stdout)
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm,power.limit",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        info["nvidia_smi"] = f"unavailable: {err}"
    return info


def worker_env() -> dict[str, Any]:
    """Versions, the device, and the two ceilings METHOD.md asks for: a large bf16 matmul and
    a device-to-device copy (random data: zeros run faster)."""
    import importlib.metadata as md

    import torch

    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "hydra-core",
                 "omegaconf", "math-verify", "tokenizers", "numpy", "tic-grpo"):  # fmt: skip
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "python": platform.python_version(), "versions": versions,
        "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpus": os.cpu_count(),
    }  # fmt: skip
    if not torch.cuda.is_available():
        return info
    props = torch.cuda.get_device_properties(0)
    nccl = torch.cuda.nccl.version()  # a tuple in torch 2.x, an int before
    info |= {
        "device": props.name, "capability": f"{props.major}.{props.minor}",
        "memory_gib": props.total_memory / 2**30, "multiprocessors": props.multi_processor_count,
        "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
        "bf16_peak_tflops_datasheet": BF16_PEAK_TFLOPS,
    }  # fmt: skip
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    info["bf16_matmul_tflops"] = 2 * n**3 / _cuda_time(lambda: a @ b) / 1e12
    x = torch.randn(2**30 // 2, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    y = torch.empty_like(x)
    info["copy_tb_per_s"] = 2 * x.numel() * 2 / _cuda_time(lambda: y.copy_(x)) / 1e12
    return info


def _cuda_time(fn: Callable[[], Any], warmup: int = 3, reps: int = 10) -> float:
    """Median seconds of `fn` on the GPU, timed with CUDA events after a warm-up."""
    import statistics

    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def part_pytest(ctx: Context, limit: float) -> dict[str, Any]:
    junit = ctx.work / "pytest_gpu.xml"
    argv = [ctx.python, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
            f"--junitxml={junit}", "tests/test_gpu.py"]  # fmt: skip
    try:
        run(ctx, argv, limit)
        failed = None
    except PartFailed as err:
        failed = str(err)
    cases = _junit_cases(junit)
    out = {"cases": cases, "counts": {s: sum(c["status"] == s for c in cases.values())
                                      for s in ("passed", "failed", "skipped")}}  # fmt: skip
    if failed:
        out["error"] = failed
        ctx.results.setdefault("pytest_gpu", {}).update(out)
        raise PartFailed(f"{out['counts']['failed']} gpu test(s) failed: see cases")
    return out


def _junit_cases(path: Path) -> dict[str, dict[str, str]]:
    import xml.etree.ElementTree as ET

    if not path.is_file():
        return {}
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                status = "skipped" if tag == "skipped" else "failed"
                message = (found.get("message") or "")[:500]
        cases[case.get("name", "?")] = {"status": status, "message": message}
    return cases


def part_mismatch(ctx: Context, limit: float) -> dict[str, Any]:
    argv = [ctx.python, __file__, "--worker", "mismatch"] + (["--dry-run"] if ctx.dry else [])
    return last_json(run(ctx, argv, limit).stdout)


def worker_mismatch(dry: bool) -> dict[str, Any]:
    """|log pi_sampler - log pi_trainer| per token on the rollout's completions, tiny and
    tiny_chain, float32 and bf16 autocast: what `trainer.old_logprobs=sampler` would hand the
    loss, and what mismatch/* logs during training."""
    import torch

    sys.path.insert(0, str(ROOT))  # tests/ is a package: tests.gpu_helpers
    from tests.gpu_helpers import logprob_gap

    device = torch.device("cpu" if dry else "cuda")
    out = {}
    for model in ("tiny", "tiny_chain"):
        for amp in (False, True):
            # The dry run's CPU draws 4 prompts' groups, not 32: the code path, not the figure.
            gap = logprob_gap(model, device, amp, prompts=4 if dry else 32)
            out[f"{model}_{'bf16' if amp else 'fp32'}"] = gap
    return out


def part_train(run_spec: TrainRun) -> Callable[[Context, float], dict[str, Any]]:
    def part(ctx: Context, limit: float) -> dict[str, Any]:
        run_dir = ctx.work / "runs" / run_spec.name
        hardware = ["hardware=cpu", *run_spec.dry] if ctx.dry else ["hardware=gpu"]
        started = time.monotonic()
        run(ctx, train_command(ctx.python, [*run_spec.overrides, *hardware], run_dir), limit)
        out = read_run(run_dir) | {"command_s": time.monotonic() - started}
        out |= compare_with_cpu(run_spec.name, out, ctx.dry)
        return out

    return part


def compare_with_cpu(name: str, gpu: dict[str, Any], dry: bool) -> dict[str, Any]:
    """The CPU figure for the same run and seed, and whether the GPU's lies within
    ACCURACY_TOLERANCE of it (a flag for the reader, not a failure of the part)."""
    if not REFERENCE.is_file():
        return {"cpu_reference": None}
    ref = json.loads(REFERENCE.read_text())["runs"].get(name)
    if ref is None or "summary" not in gpu:
        return {"cpu_reference": ref}
    cpu_acc = ref["summary"]["final/eval_accuracy"]
    gpu_acc = gpu["summary"]["final/eval_accuracy"]
    return {
        "cpu_reference": {"final/eval_accuracy": cpu_acc, "eval_curve": ref.get("eval_curve")},
        "accuracy_gap": None if dry else gpu_acc - cpu_acc,
        "within_tolerance": None if dry else abs(gpu_acc - cpu_acc) <= ACCURACY_TOLERANCE,
    }


def part_distributed(mode: str) -> Callable[[Context, float], dict[str, Any]]:
    """`hardware=ddp|fsdp` with one rank: the launcher, nccl, FSDP's wrapping and its sharded
    checkpoint, on one GPU."""

    def part(ctx: Context, limit: float) -> dict[str, Any]:
        run_dir = ctx.work / "runs" / mode
        steps = ["trainer.max_steps=40", "trainer.eval_every=40", "trainer.save_every=20"]
        hardware = [f"hardware={mode}", "hardware.nproc_per_node=1"]
        if ctx.dry:  # gloo on the CPU stands in for nccl
            hardware += ["hardware.device=cpu", "hardware.num_threads=1"]
            steps = ["trainer.max_steps=4", "trainer.eval_every=4", "trainer.eval_limit=16",
                     "trainer.save_every=2"]  # fmt: skip
        run(ctx, train_command(ctx.python, [*hardware, *steps], run_dir), limit)
        out = read_run(run_dir)
        if "summary" not in out:
            raise PartFailed(f"{mode}: no summary.json in {run_dir}")
        out["checkpoints"] = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
        return out

    return part


def part_lora(ctx: Context, limit: float) -> dict[str, Any]:
    run_dir = ctx.work / "runs" / "lora"
    overrides = ["model.lora.enabled=true", "model.lora.r=8", "model.lora.alpha=16",
                 "trainer.lr=1e-3", "trainer.max_steps=40", "trainer.eval_every=40",
                 "trainer.save_every=40"]  # fmt: skip
    hardware = ["hardware=cpu", "trainer.max_steps=4", "trainer.eval_every=4",
                "trainer.eval_limit=16", "trainer.save_every=4"] if ctx.dry else ["hardware=gpu"]  # fmt: skip
    run(ctx, train_command(ctx.python, [*overrides, *hardware], run_dir), limit)
    out = read_run(run_dir)
    step = max(run_dir.glob("checkpoints/step_*"), default=None)
    out["adapter_saved"] = bool(step and (step / "adapter").is_dir())
    if not out["adapter_saved"]:
        raise PartFailed("no adapter/ in the last checkpoint: LoRA did not reach the export")
    return out


def part_throughput(ctx: Context, limit: float) -> dict[str, Any]:
    """Ours vs TRL at Qwen2.5-0.5B's shape (bench_vs_trl.py, both in bf16 autocast over
    float32 weights, old log-probs recomputed in both), one worker process per system."""
    model_dir = build_shape_model(ctx)
    result = ctx.work / "bench_vs_trl.json"
    shape = (["--prompts", "2", "--group", "2", "--length", "8", "--k", "2", "--rollouts", "1",
              "--warmup", "0"] if ctx.dry else
             ["--prompts", "16", "--group", "8", "--length", "256", "--k", "4", "--rollouts",
              "2", "--warmup", "1"])  # fmt: skip
    argv = [
        ctx.python, str(BENCHMARKS / "bench_vs_trl.py"), "--models", "qwen2_5_0_5b_shape",
        "--model-dir", str(model_dir), "--device", "cpu" if ctx.dry else "cuda",
        "--precision", "fp32" if ctx.dry else "bf16", "--reps", "1", "--threads", "2",
        "--peak-tflops", str(BF16_PEAK_TFLOPS), "--out", str(result), *shape,
    ]  # fmt: skip
    run(ctx, argv, limit)
    bench = json.loads(result.read_text())
    res = bench["qwen2_5_0_5b_shape"]
    out: dict[str, Any] = {"shape": shape, "speedup_vs_trl": res["speedup"]}
    for system in ("ours", "trl"):
        r = res[system]
        phases, tokens = r["phases_s"], r["completion_tokens"]
        rows = bench["args"]["prompts"] * bench["args"]["group"]
        # Update tokens: every row's prompt and completion go through forward and backward.
        update_tokens = rows * r["prompt_tokens_mean"] + tokens
        out[system] = {
            "rollout_s": r["rollout_s"]["median"], "phases_s": phases,
            "generate_tokens_per_s": tokens / max(phases["generate"], 1e-9),
            "update_tokens_per_s": update_tokens / max(phases["update"], 1e-9),
            "tokens_per_s": r["tokens_per_s"], "mfu": r["utilisation"],
            "peak_gpu_memory_gib": r.get("peak_gpu_memory_gib"), "params": r["params"],
        }  # fmt: skip
    return out


def part_profile(ctx: Context, limit: float) -> dict[str, Any]:
    model_dir = build_shape_model(ctx)
    shape = (["--prompts", "2", "--group", "2", "--length", "8", "--k", "2"] if ctx.dry else
             # Fewer decode steps than `throughput`: every kernel is an event to the profiler.
             ["--prompts", "8", "--group", "8", "--length", "64", "--k", "4"])  # fmt: skip
    argv = [
        ctx.python, str(BENCHMARKS / "bench_profile.py"), "--model", "qwen2_5_0_5b_shape",
        "--model-dir", str(model_dir), "--device", "cpu" if ctx.dry else "cuda",
        "--precision", "fp32" if ctx.dry else "bf16", "--rows", "15", "--json", *shape,
    ]  # fmt: skip
    return last_json(run(ctx, argv, limit).stdout)


def build_shape_model(ctx: Context) -> Path:
    """Qwen2.5-0.5B's architecture with random weights and a synthetic tokenizer of its
    vocabulary, saved once per check (the dry run shrinks the layers, not the vocabulary)."""
    path = ctx.work / ("qwen_shape_dry" if ctx.dry else "qwen_shape")
    if not (path / "config.json").is_file():
        sys.path.insert(0, str(BENCHMARKS))
        import shape_model

        shape_model.save_random_model(path, shrink=ctx.dry)
    return path


PARTS: dict[str, tuple[Callable[[Context, float], dict[str, Any]], float]] = {
    # name: (function, time limit in seconds on the GPU)
    "env": (part_env, 60),
    "pytest_gpu": (part_pytest, 150),
    "mismatch": (part_mismatch, 60),
    "train_default_seed0": (part_train(TRAIN_RUNS[0]), 90),
    "train_chain_seed0": (part_train(TRAIN_RUNS[2]), 90),
    "throughput": (part_throughput, 200),
    "ddp": (part_distributed("ddp"), 75),
    "fsdp": (part_distributed("fsdp"), 75),
    "lora": (part_lora, 60),
    "train_default_seed1": (part_train(TRAIN_RUNS[1]), 90),
    "profile": (part_profile, 90),
}


def run_parts(ctx: Context, names: list[str]) -> None:
    path = ctx.out / "gpu_check.json"
    ctx.results["_meta"] = {
        "dry_run": ctx.dry, "parts": names, "python": ctx.python,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        # scripts/gpu_check.sh's install step: ok, fallback (wheels without dependencies) or
        # failed; install.log beside this file has pip's output and `pip check`.
        "install": os.environ.get("GPU_CHECK_INSTALL", "not run (gpu_check.py called directly)"),
    }  # fmt: skip
    for name in names:
        fn, limit = PARTS[name]
        if ctx.dry:
            limit *= DRY_SLOWDOWN
        limit = min(limit, ctx.left())
        if limit < 10:
            ctx.results[name] = {"status": "skipped", "reason": "out of time (--budget)"}
            continue
        print(f"[gpu_check] {name} (limit {limit:.0f} s) ...", flush=True)
        ctx.log.write(f"\n===== {name} =====\n")
        started = time.monotonic()
        entry = ctx.results.setdefault(name, {})
        try:
            entry.update(fn(ctx, limit))
            entry["status"] = "ok"
        except PartFailed as err:
            entry |= {"status": "failed", "error": str(err)}
        except Exception:  # a bug in the check itself: record it and go on
            entry |= {"status": "failed", "error": traceback.format_exc()[-3000:]}
        entry["seconds"] = round(time.monotonic() - started, 1)
        print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']} s", flush=True)
        ctx.results["_meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        path.write_text(json.dumps(ctx.results, indent=1, default=str))
    summary = {n: ctx.results[n].get("status") for n in names}
    print("[gpu_check] " + ", ".join(f"{n}: {s}" for n, s in summary.items()))
    for line in key_figures(ctx.results):
        print(f"[gpu_check]   {line}")


def key_figures(results: dict[str, Any]) -> list[str]:
    """A few lines for the console (the device tool returns the output's tail): the figures
    the issue asks for, where their parts produced them."""
    lines = []
    tests = results.get("pytest_gpu", {}).get("counts")
    if tests:
        failed = [n for n, c in results["pytest_gpu"]["cases"].items() if c["status"] == "failed"]
        lines.append(f"gpu tests: {tests}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    for name, gap in results.get("mismatch", {}).items():
        if isinstance(gap, dict) and "max_abs" in gap:
            lines.append(f"log-prob gap {name}: max {gap['max_abs']:.2e}, "
                         f"mean {gap['mean_abs']:.2e}")  # fmt: skip
    for name, part in results.items():
        summary = part.get("summary") if isinstance(part, dict) else None
        if summary:
            ref = part.get("cpu_reference") or {}
            cpu = ref.get("final/eval_accuracy")
            lines.append(
                f"{name}: eval {summary['final/eval_accuracy']:.3f}"
                + (f" (CPU {cpu:.3f})" if cpu is not None else "")
                + f", {summary['steps']} steps in {summary['wall_time_s']:.0f} s"
            )
    bench = results.get("throughput", {})
    for system in ("ours", "trl"):
        if system in bench:
            r = bench[system]
            memory = r["peak_gpu_memory_gib"]
            lines.append(
                f"throughput {system}: rollout {r['rollout_s']:.2f} s, generate "
                f"{r['generate_tokens_per_s']:.0f} tok/s, update {r['update_tokens_per_s']:.0f} "
                f"tok/s, MFU {r['mfu']:.1%}" + (f", peak {memory:.1f} GiB" if memory else "")
            )
    if "speedup_vs_trl" in bench:
        lines.append(f"ours vs TRL: {bench['speedup_vs_trl']:.2f}x")
    return lines


def record_cpu_reference(python: str) -> None:
    """Run TRAIN_RUNS on this machine's CPU (hardware=cpu) and write REFERENCE."""
    runs = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_ref_") as tmp:
        for spec in TRAIN_RUNS:
            run_dir = Path(tmp) / spec.name
            started = time.monotonic()
            subprocess.run(train_command(python, [*spec.overrides, "hardware=cpu"], run_dir),
                           cwd=ROOT, check=True, capture_output=True)  # fmt: skip
            runs[spec.name] = read_run(run_dir) | {
                "command_s": round(time.monotonic() - started, 1),
                "overrides": [*spec.overrides, "hardware=cpu"],
            }  # fmt: skip
            print(spec.name, runs[spec.name]["eval_curve"], flush=True)
    import torch

    REFERENCE.write_text(json.dumps({
        "what": "CPU figures for the GPU check's train runs (scripts/gpu_check.py TRAIN_RUNS)",
        "command": "python scripts/gpu_check.py --record-cpu-reference",
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": _commit()},
        "runs": runs,
    }, indent=1) + "\n")  # fmt: skip


def _commit() -> str:
    """This checkout's commit, so a reference says which code it was measured with."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True, check=False)  # fmt: skip
    return out.stdout.strip() or "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="where gpu_check.json and gpu_check.log go")
    parser.add_argument("--dry-run", action="store_true", help="CPU stand-ins, no GPU needed")
    parser.add_argument("--only", help="comma-separated parts to run (default: all)")
    parser.add_argument("--budget", type=float, default=450,
                        help="seconds; no part starts once they are spent (dry run: x10)")  # fmt: skip
    parser.add_argument("--record-cpu-reference", action="store_true")
    parser.add_argument("--worker", choices=("env", "mismatch"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "env":
        print(json.dumps(worker_env()))
        return
    if args.worker == "mismatch":
        print(json.dumps(worker_mismatch(args.dry_run)))
        return
    if args.record_cpu_reference:
        record_cpu_reference(sys.executable)
        return
    if args.out is None:
        parser.error("--out is required")
    names = args.only.split(",") if args.only else list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget * (DRY_SLOWDOWN if args.dry_run else 1)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work, \
            open(args.out / "gpu_check.log", "a") as log:  # fmt: skip
        ctx = Context(args.out, Path(work), args.dry_run, log=log,
                      deadline=time.monotonic() + budget)  # fmt: skip
        previous = args.out / "gpu_check.json"
        if args.only and previous.is_file():  # a re-run of some parts keeps the others
            ctx.results = json.loads(previous.read_text())
            for name in names:
                ctx.results.pop(name, None)
        run_parts(ctx, names)


if __name__ == "__main__":
    main()
