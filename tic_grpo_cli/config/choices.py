"""The values a config field may take, where they form a fixed set.

Each set is an Enum of `Choice`, so OmegaConf refuses any other value when the config is
composed and lists the allowed ones (`overrides.py` turns that into our one line with "did
you mean"). A few choices stay plain strings and are checked in `validation.py`.
"""

from __future__ import annotations

from enum import Enum

# Choices that stay plain strings: YAML reads `true` as a bool, which no Enum member can
# be; operator names are no identifiers, and which are allowed depends on the task.
CHAT_TEMPLATE_MODES = ("auto", "true", "false")
ARITHMETIC_OPERATORS = ("+", "-", "*")
COUNTDOWN_OPERATORS = ("+", "-", "*", "/")


class Choice(str, Enum):
    """A field's allowed values. OmegaConf refuses any other when the config is composed
    (and overrides.py names the closest ones); everywhere else a value is its plain string:
    ==, hashing, f-strings, repr and JSON all see "tic", so code reading the config never
    meets the Enum. Each member is named as its value: OmegaConf looks a value up by name."""

    def __str__(self) -> str:
        return str.__str__(self)

    __format__ = str.__format__
    __repr__ = str.__repr__


class AlgorithmName(Choice):
    grpo = "grpo"
    grpo_no_is = "grpo_no_is"
    tic = "tic"
    ub_clip = "ub_clip"
    traj_is = "traj_is"
    gspo = "gspo"
    dr_grpo = "dr_grpo"
    dapo = "dapo"
    cispo = "cispo"
    gmpo = "gmpo"
    dppo = "dppo"


class Aggregation(Choice):
    seq_mean_token_mean = "seq_mean_token_mean"
    seq_mean_token_sum_norm = "seq_mean_token_sum_norm"
    token_mean = "token_mean"


class KlEstimator(Choice):
    k1 = "k1"
    k2 = "k2"
    k3 = "k3"


class RolloutCorrection(Choice):
    none = "none"
    token_tis = "token_tis"
    seq_tis = "seq_tis"
    seq_mis = "seq_mis"


class DatasetKind(Choice):
    arithmetic = "arithmetic"
    countdown = "countdown"
    chain = "chain"
    hf = "hf"


class Scorer(Choice):
    auto = "auto"
    exact = "exact"
    number = "number"
    gsm8k = "gsm8k"
    math = "math"
    countdown = "countdown"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Dtype(Choice):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Distributed(Choice):
    none = "none"
    ddp = "ddp"
    fsdp = "fsdp"


class Backend(Choice):
    auto = "auto"
    nccl = "nccl"
    gloo = "gloo"


class MixedPrecision(Choice):
    none = "none"
    bf16 = "bf16"


class OldLogprobs(Choice):
    recompute = "recompute"
    sampler = "sampler"


class LrSchedule(Choice):
    constant = "constant"
    cosine = "cosine"
    wsd = "wsd"


class WandbMode(Choice):
    offline = "offline"
    online = "online"
    disabled = "disabled"
