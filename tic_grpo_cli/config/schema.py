"""Config schemas: one dataclass per group, registered in Hydra's ConfigStore.

The primary configs (`conf/train.yaml`, `eval.yaml`, `sweep.yaml`) start from the schemas
registered here, so every group option merges into a typed node: a wrong type, an
unknown key or a value outside a field's choices (`choices.py`) fails when the config is
composed, before any model or data set loads. `validation.py` adds the semantic checks
(ranges, divisibility, keys that only make sense together).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from tic_grpo_cli.config.choices import (
    Aggregation,
    AlgorithmName,
    Backend,
    DatasetKind,
    Device,
    Distributed,
    Dtype,
    KlEstimator,
    LrSchedule,
    MixedPrecision,
    OldLogprobs,
    RolloutCorrection,
    Scorer,
    WandbMode,
)
from tic_grpo_cli.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value is wrong; the message names the key and what is allowed."""


@dataclass
class AlgorithmConfig:
    name: AlgorithmName = AlgorithmName.tic
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    # None: the algorithm's own normalisation from the paper (arXiv 2508.02833).
    aggregation: Aggregation | None = None
    normalize_std: bool = True
    batch_std: bool = False
    length_corrected_advantage: bool = False
    kl_coef: float = 0.0
    kl_estimator: KlEstimator = KlEstimator.k3
    # Sampler-trainer mismatch correction, a stop-gradient weight on each loss term when old
    # log-probs are recomputed: none | token_tis | seq_tis | seq_mis (docs/algorithms.md).
    rollout_correction: RolloutCorrection = RolloutCorrection.none
    # Its threshold C (> 1): weights capped at C (tis), completions outside [1/C, C] dropped (mis).
    rollout_correction_c: float = 2.0


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    # Must stay 0: dropout would make the log-prob passes disagree (docs/models.md).
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    # A saved adapter (a LoRA checkpoint's adapter/ dir): with enabled=true training starts
    # from it; alone, it is merged into the weights (how eval loads a LoRA checkpoint).
    adapter: str | None = None
    # Every checkpoint also holds the merged model (config.json + weights); the final one
    # (at trainer.max_steps) always does. Others hold the adapter only.
    save_merged: bool = False


@dataclass
class ModelConfig:
    # "tiny" is the embedded model; otherwise a local directory, a .gguf file or a hub name.
    name_or_path: str = "tiny"
    # A GGUF file: a path, a file inside name_or_path, or (with gguf_package) a file inside an
    # installed PyPI package; name_or_path then only labels the model. See docs/models.md.
    gguf_file: str | None = None
    gguf_package: str | None = None
    revision: str | None = None
    # auto: hardware.dtype (auto there too: bfloat16 on a GPU, float32 on the CPU).
    dtype: Dtype = Dtype.auto
    # sdpa | eager | flash_attention_2 | null (the model's default).
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class RewardConfig:
    # auto | exact | number | gsm8k | math | countdown; auto = the task's own scorer
    # (arithmetic: exact, countdown: countdown, hf: per row from data_source, else math).
    scorer: Scorer = Scorer.auto
    # A user reward function `package.module:function`, replacing the correctness term. It
    # is called as fn(completions, **fields) with one list per example field and returns one
    # number per completion, or {"reward": [...], "correct": [...]} (docs/rewards.md).
    fn: str | None = None
    # With `fn`: a reward >= this counts as correct (accuracy). null: the `correct` list fn
    # returns, else the scorer's verdict.
    correct_threshold: float | None = None
    # More reward terms (TRL's reward_funcs): each `package.module:function`, called like
    # `fn`, added to the reward times its weight (default 1 each); logged as reward/<name>.
    fns: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    # Seconds one math-verify verification may take; a timed-out verdict is wrong and
    # counted in reward/timed_out.
    verify_timeout: float = 5.0
    # Optional format term: a regex a completion must contain (re.search, DOTALL), and the
    # weight of that term; reward = correct + format_weight * format + sum(weights * fns).
    format_pattern: str | None = None
    format_weight: float = 0.0
    # Completions are decoded for the scorer and reward functions without special tokens;
    # false keeps them (a model whose <think> or tool-call tokens are special shows them).
    skip_special_tokens: bool = True


@dataclass
class DatasetConfig:
    # arithmetic | countdown (generated offline) | hf (Hugging Face `datasets`).
    kind: DatasetKind = DatasetKind.arithmetic
    # Embedded tasks: generated from `seed`; train and test never share a problem.
    # For kind=hf, seed and test_size pick the held-out rows when test_split is null.
    seed: int = 0
    train_size: int = 8000
    test_size: int = 500
    digits: int = 2  # arithmetic: operand digits
    operators: list[str] = field(default_factory=lambda: ["+"])  # arithmetic: + - *
    num_numbers: int = 3  # countdown: numbers given
    max_number: int = 25  # countdown: numbers are drawn from [1, max_number]
    max_target: int = 100  # countdown: targets lie in [1, max_target]
    chain_length: int = 4  # chain: steps per problem (each ~8 tokens of answer)
    # Hugging Face `datasets`: a hub name, or a local file (.json/.jsonl/.parquet/.arrow/.csv)
    # or directory (data files or a save_to_disk dir). verl parquet files are recognised.
    path: str | None = None
    config_name: str | None = None
    data_files: Any = None
    cache_dir: str | None = None
    # null train_split: an eval-only set; null test_split: hold out test_size train rows.
    train_split: str | None = "train"
    test_split: str | None = "test"
    prompt_field: str = "question"
    # May be dotted into a struct column, e.g. reward_model.ground_truth.
    answer_field: str = "answer"
    system_prompt: str | None = None
    # `{prompt}` is the prompt field; any other `{column}` is that field; `{{ }}` are braces;
    # any other brace text (e.g. \boxed{}) is kept as written.
    prompt_template: str = "{prompt}"
    # auto: apply the tokenizer's chat template when it has one; true; false.
    use_chat_template: str = "auto"
    # Skip (and count) rows with a missing prompt or answer instead of failing.
    skip_bad_rows: bool = False
    # Longest completion the task needs: the generation limit T unless overridden.
    max_completion_length: int = 8
    # Longest prompt in tokens (after the chat template); a longer one stops the run at load
    # with a count (skip_bad_rows=true skips them instead). null: no limit. Prompt plus
    # max_completion_length must fit the model's context either way.
    max_prompt_length: int | None = 512
    reward: RewardConfig = field(default_factory=RewardConfig)


# Dataset keys that only some kinds read (data/embedded.py, data/hf.py); every other key
# (seed, test_size, test_split, skip_bad_rows, the prompt and reward keys, the lengths)
# applies to all. `--cfg job` shows a dataset the keys of its own kind only
# (config/shown.py), and one set away from its default on another kind is refused
# (validation._check_kind_keys).
EMBEDDED_KINDS = ("arithmetic", "countdown", "chain")
DATASET_KIND_KEYS = {
    "train_size": EMBEDDED_KINDS,
    "digits": ("arithmetic",),
    "operators": ("arithmetic", "countdown"),
    "num_numbers": ("countdown",),
    "max_number": ("countdown",),
    "max_target": ("countdown",),
    "chain_length": ("chain",),
    **dict.fromkeys(
        ("path", "config_name", "data_files", "cache_dir", "train_split", "prompt_field",
         "answer_field"),
        ("hf",),
    ),
}  # fmt: skip


@dataclass
class HardwareConfig:
    device: Device = Device.auto
    dtype: Dtype = Dtype.float32
    num_threads: int | None = None
    # none | ddp | fsdp: one process per device (docs/scaling.md).
    distributed: Distributed = Distributed.none
    # auto: nccl on GPUs, gloo on the CPU.
    backend: Backend = Backend.auto
    # Processes `tic-grpo train` starts on this machine (under torchrun, torchrun decides).
    nproc_per_node: int = 1
    # bf16: forward passes in bfloat16 autocast over float32 weights and optimizer state.
    mixed_precision: MixedPrecision = MixedPrecision.none


@dataclass
class TrainerConfig:
    # Optimizer steps; one rollout yields K * ppo_epochs of them.
    max_steps: int = 2800
    rollout_batch_size: int = 32
    group_size: int = 8
    minibatch_size: int = 8
    micro_batch_size: int = 128
    # pi_old's log-probs: recompute (a no-grad training forward; every ratio is exactly 1
    # before the first update) or sampler (the rollout's own; saves that pass, but the
    # sampler's numerics differ: ~1e-6 in float32 on the CPU, 0 under CPU bf16 autocast,
    # more with GPU bf16 kernels or another engine; logged as mismatch/*, docs/algorithms.md).
    old_logprobs: OldLogprobs = OldLogprobs.recompute
    # Off-policy rollouts (train/staleness.py): each update trains the rollout generated this
    # many rollouts earlier, sampled by a policy that many updates old (0: synchronous).
    # old_logprobs then picks the ratio's anchor: sampler = the behaviour policy mu, recompute
    # = the proximal policy (weights at the update's start; docs/algorithms.md).
    staleness: int = 0
    # Completions sampled at once (null: the whole rollout); bounds the KV cache's memory.
    generation_batch_size: int | None = None
    ppo_epochs: int = 1
    max_completion_length: int = "${dataset.max_completion_length}"  # type: ignore[assignment]
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    lr: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    warmup_steps: int = 0
    # After warm-up: constant; cosine (to 0 at max_steps); wsd (warmup-stable-decay:
    # constant, then linear to 0 over the last decay_fraction of max_steps). The decay
    # settles the policy: the default run's last evaluations rise ~10 points with it and
    # stop swinging by 5-15 points (docs/models.md).
    lr_schedule: LrSchedule = LrSchedule.wsd
    decay_fraction: float = 0.33
    max_grad_norm: float = 1.0
    eval_every: int = 200
    eval_limit: int | None = None
    eval_batch_size: int = 256
    log_every: int = 40
    # Samples every this many steps and at the last one (0: none).
    log_samples_every: int = 400
    save_every: int = 400
    # Pruning keeps the newest keep_last checkpoints (0: all) and, of the older ones, the
    # first in every keep_every steps (0: none), for `tic-grpo eval checkpoint.all=true`.
    keep_last: int = 2
    keep_every: int = 800
    max_nonfinite_steps: int = 3
    max_time_minutes: float | None = None


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.offline
    project: str = "tic-grpo"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class SweepConfig:
    """Multirun settings (docs/sweeps.md); neither key is part of a job dir's name."""

    # Eval accuracy that counts as "reached" for the steps-to-threshold column; read when the
    # summary is made, so `tic-grpo sweep aggregate=<dir> sweep.threshold=0.8` can change it.
    threshold: float = 0.5
    # Re-running a sweep into the same dir skips jobs whose last attempt wrote summary.json.
    skip_finished: bool = True


@dataclass
class TrainConfig:
    algorithm: AlgorithmConfig = MISSING
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    hardware: HardwareConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 0
    # null | auto | path to a checkpoint or run dir
    resume: str | None = None


@dataclass
class CheckpointSelection:
    # A checkpoint dir, a run dir (its latest checkpoint) or null (the model config's model).
    path: str | None = None
    # With a run dir: evaluate every checkpoint and draw accuracy against step.
    all: bool = False
    # With `all`: the run's base model too, as step 0, so the curve starts where training
    # did (only when the run's saved config names the model eval loads).
    base: bool = True


@dataclass
class EvalOptions:
    split: str = "test"
    # Evaluate a seeded subset of this many examples (the same subset for the same seed).
    limit: int | None = None
    # Completions per example: 1 = greedy accuracy; k > 1 adds pass@k and maj@k.
    num_samples: int = 1
    # 0 = greedy decoding; num_samples > 1 needs > 0.
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = "${dataset.max_completion_length}"  # type: ignore[assignment]
    # Completions per generate call.
    batch_size: int = 256
    # With a training run: also write the metrics, one row per step, to the run's
    # eval_metrics.jsonl (not metrics.jsonl, which the trainer may still be appending to).
    log_to_run: bool = False


@dataclass
class EvalConfig:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    hardware: HardwareConfig = MISSING
    checkpoint: CheckpointSelection = field(default_factory=CheckpointSelection)
    eval: EvalOptions = field(default_factory=EvalOptions)
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(mode=WandbMode.disabled))
    seed: int = 0


@dataclass
class SweepRunConfig(TrainConfig):
    # Summarise an existing sweep dir instead of running one.
    aggregate: str | None = None


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="sweep_schema", node=SweepRunConfig)
