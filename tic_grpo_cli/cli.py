"""`tic-grpo SUBCOMMAND [hydra overrides]`: hands the rest of the line to that subcommand's
Hydra app. Each app is a thin `@hydra.main` wrapper around a pure function in its module;
heavy imports (torch, transformers) happen inside those functions so `--help` stays fast.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from tic_grpo_cli import errors
from tic_grpo_cli.config import overrides
from tic_grpo_cli.config.schema import register_configs
from tic_grpo_cli.config.validation import validate_eval, validate_train
from tic_grpo_cli.errors import Interrupted, UserError, did_you_mean, program, suggest
from tic_grpo_cli.runs.run_dir import register_resolvers
from tic_grpo_cli.runtime.console import say

CONFIG_PATH = "pkg://tic_grpo_cli.conf"
SUBCOMMANDS = {
    "train": "fine-tune a model with RL (one run; -m for a multirun)",
    "eval": "evaluate a checkpoint, a training run or a base model",
    "sweep": "run a grid of training runs and summarise them (table, CSV, plot)",
    "analyze": "exact analyses, e.g. `tic-grpo analyze gradient-bias`",
    "score": "score a JSONL of completions with a scorer / reward, no model needed",
}
log = logging.getLogger("tic_grpo")

register_configs()
register_resolvers()


def _to_run_log(level: int, message: str) -> None:
    """Write a line to the run's train.log only: the console has it on stderr already."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _fail(message: str) -> None:
    """One line on stderr and exit 2: bad input is not a crash. A run dir that stays (it
    holds results, e.g. the step-0 evaluation before a reward function failed) gets the
    line in its train.log too, so the log says why the run ended."""
    _to_run_log(logging.ERROR, f"error: {message}")
    say(f"error: {message}")
    raise SystemExit(2)


def _stopped(message: str, code: int) -> None:
    """A run stopped on a signal, its checkpoint saved: not an error, so no `error:` prefix
    and exit 128 + the signal's number. The line goes into the run's train.log first, so
    the log says how to continue even when the terminal is gone (Ctrl-C under `| tee`
    ends the reader of stderr: `say` survives that)."""
    _to_run_log(logging.WARNING, message)
    say(message)
    raise SystemExit(code)


def _guarded(fn: Callable[[], Any]) -> Any:
    # A KeyboardInterrupt goes up to main(): one line, exit 130, from anywhere.
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return fn()
    try:
        return fn()
    except Interrupted as err:
        _stopped(str(err), err.exit_code)
    except UserError as err:
        _fail(str(err))


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _run_training_job(cfg: DictConfig) -> dict[str, Any] | None:
    """Run one training job. In a multirun a failed job is recorded, not fatal to the others,
    and a job that already finished (its summary.json exists) is skipped."""
    _guarded(lambda: validate_train(cfg))  # before torch, models or data load
    from tic_grpo_cli.runtime import launch
    from tic_grpo_cli.sweep import summary as sweep
    from tic_grpo_cli.train.loop import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run = partial(train, cfg, run_dir)
    if launch.needs_launch(cfg.hardware):
        # `tic-grpo train hardware=ddp|fsdp` outside torchrun: start the ranks, each composing
        # this same job into this run dir, and return what rank 0 wrote.
        run = partial(launch.launch, cfg.hardware.nproc_per_node, _rank_argv(run_dir), run_dir)
    if not _is_multirun():
        return _guarded(run)
    if cfg.wandb.group is None:
        # W&B groups a sweep's runs by the sweep dir's name.
        cfg.wandb.group = "/".join(Path(HydraConfig.get().sweep.dir).parts[-2:])
    finished = sweep.finished_summary(run_dir)
    if finished is not None and cfg.sweep.skip_finished:
        log.info("skipping finished job %s (delete its summary.json to re-run)", run_dir)
        return finished
    try:
        return run()
    except Interrupted as err:  # Ctrl-C or a scheduler's SIGTERM: stop the whole sweep
        _stopped(f"{err.where}. The sweep stops here; continue it with: {_sweep_again()}",
                 err.exit_code)  # fmt: skip
    except Exception as err:
        sweep.record_failure(run_dir, err)
        log.error("job failed: %s: %s (recorded in %s)", type(err).__name__, err, run_dir)
        return None


def _sweep_again() -> str:
    """The command that continues this multirun: the same grid in the same sweep dir, finished
    jobs skipped (sweep.skip_finished), the interrupted one resumed from its checkpoint."""
    sweep_dir = Path(HydraConfig.get().sweep.dir).absolute()
    kept = [a for a in sys.argv[1:] if not a.startswith(("hydra.sweep.dir=", "resume="))]
    added = [f"hydra.sweep.dir={sweep_dir}", "resume=auto"]
    return " ".join([program(), "sweep", *(shlex.quote(a) for a in kept + added)])


def _rank_argv(run_dir: Path) -> list[str]:
    """The command line of one rank: this job's config and overrides, in this run dir (whose
    .hydra/ this process wrote already)."""
    hydra_cfg = HydraConfig.get()
    return [
        "-m",
        "tic_grpo_cli",
        "train",
        "--config-name",
        hydra_cfg.job.config_name,
        *hydra_cfg.overrides.task,
        f"hydra.run.dir={run_dir}",
        "hydra.output_subdir=null",
    ]


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train_app(cfg: DictConfig) -> float | None:
    summary = _run_training_job(cfg)
    # Returned so an Optuna sweeper can maximise it.
    return None if summary is None else summary.get("final/eval_accuracy")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sweep")
def sweep_app(cfg: DictConfig) -> float | None:
    if cfg.aggregate:
        from tic_grpo_cli.sweep.summary import summarize

        _guarded(lambda: summarize(Path(cfg.aggregate), threshold=cfg.sweep.threshold))
        return None
    summary = _run_training_job(cfg)
    return None if summary is None else summary.get("final/eval_accuracy")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def eval_app(cfg: DictConfig) -> None:
    _guarded(lambda: validate_eval(cfg))
    from tic_grpo_cli.evaluation.evaluate import evaluate
    from tic_grpo_cli.evaluation.run_config import adopt_run_config

    # A training run is evaluated on its own task unless the command line says otherwise.
    _guarded(lambda: adopt_run_config(cfg, list(HydraConfig.get().overrides.task)))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    _guarded(lambda: evaluate(cfg, run_dir))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="score")
def score_app(cfg: DictConfig) -> float:
    from tic_grpo_cli.evaluation.score import run, validate

    _guarded(lambda: validate(cfg))
    return _guarded(lambda: run(cfg))["accuracy"]


def _score_schema() -> Callable[[DictConfig], None]:
    """Register `tic-grpo score`'s schema (only when that command runs: its module loads the
    rewards) and return its validation."""
    from tic_grpo_cli.evaluation.score import ScoreConfig, validate

    ConfigStore.instance().store(name="score_schema", node=ScoreConfig)
    return validate


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: tic-grpo SUBCOMMAND [hydra overrides ...]",
        "",
        "RL fine-tuning of language models: TIC-GRPO, GRPO and their ablations.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()),
        "",
        "`tic-grpo SUBCOMMAND --help` lists its config groups and options.",
        "examples:",
        "  tic-grpo train algorithm=tic",
        "  tic-grpo train --cfg job algorithm=grpo model=tiny",
        "  tic-grpo sweep algorithm=grpo,tic seed=0,1,2",
        "  tic-grpo eval checkpoint=outputs/train/<date>/<time>-<pid>",
        "  tic-grpo score input=completions.jsonl scorer=gsm8k output=scored.jsonl",
    ]
    return "\n".join(lines)


def _eval_argv(args: list[str]) -> list[str]:
    # `checkpoint=<path>` is the natural spelling, but `checkpoint` is a node with `all` beside
    # `path`; map the short form onto the path key.
    return [
        f"checkpoint.path={a.split('=', 1)[1]}" if a.startswith("checkpoint=") else a for a in args
    ]


def _sweep_argv(args: list[str]) -> list[str]:
    target = next((a.split("=", 1)[1] for a in args if a.startswith("aggregate=")), None)
    if target is not None:
        # Summarising writes into the sweep dir itself, not a new timestamped run dir.
        return [
            *args,
            f"hydra.run.dir={target}",
            "hydra.output_subdir=null",
            "hydra.job.name=aggregate",
        ]
    # `--cfg job` / `--info` show one job's config; Hydra refuses them with --multirun.
    if {"-m", "--multirun", "--info", "-i", *overrides.SHOW_CONFIG} & set(args):
        return args
    return ["--multirun", *args]


def quiet_progress_bars() -> None:
    """No tqdm bars when stderr is not a terminal: redrawn with \\r, a bar in a log file (GGUF
    de-quantisation, a hub download) is one line thousands of characters long. tqdm and
    huggingface_hub read these variables when imported, so this runs before either is."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    quiet_progress_bars()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        hint = did_you_mean(suggest(command, list(SUBCOMMANDS)))
        print(
            f"error: unknown subcommand {command!r}{hint} (choose one of: {', '.join(SUBCOMMANDS)})",
            file=sys.stderr,
        )
        return 2
    if command == "train" and any(a.startswith("resume=") for a in rest):
        from tic_grpo_cli.config.resume_argv import resume_argv

        rest = resume_argv(rest)  # the run's own overrides and dir
    if command == "analyze":
        from tic_grpo_cli.analysis import main as analyze_main

        return analyze_main(rest)
    if command == "score":
        # Its exit status is main's return value, as before it was a Hydra app: a script
        # calling main gets 2 for bad input, not the SystemExit train and eval raise.
        try:
            return _run_app(command, rest or ["--help"])  # nothing to score: say how
        except SystemExit as stop:
            code = stop.code  # None is success, a message a failure (as Python exits)
            return code if isinstance(code, int) else int(code is not None)
    return _run_app(command, rest)


def _run_app(command: str, args: list[str]) -> int:
    """Check the overrides of `tic-grpo <command> <args>`, then run its Hydra app."""
    apps = {
        "train": (train_app, args),
        "eval": (eval_app, _eval_argv(args)),
        "sweep": (sweep_app, _sweep_argv(args)),
        "score": (score_app, args),
    }
    app, app_args = apps[command]
    if not any(a.startswith("aggregate=") for a in app_args):
        if command == "score":
            validate = _score_schema()
        else:
            validate = validate_eval if command == "eval" else validate_train
        _guarded(lambda: overrides.check(command, app_args, validate))
    # Hydra parses sys.argv itself; the program name keeps the subcommand so that help and
    # error messages show the command the user typed. Printed commands still need the real one.
    errors.ENTRY_POINT = errors.ENTRY_POINT or (sys.argv[0] if sys.argv else "")
    sys.argv = [f"tic-grpo {command}", *app_args]
    if overrides.SHOW_CONFIG & set(app_args):
        from tic_grpo_cli.config import shown

        shown.install()  # --cfg job: the dataset keys of its kind only
    if command != "sweep":
        app()
        return 0
    from tic_grpo_cli.sweep.summary import UNFINISHED_JOBS

    UNFINISHED_JOBS.clear()
    app()
    unfinished = {d: n for d, n in UNFINISHED_JOBS.items() if n}
    for sweep_dir, count in unfinished.items():
        print(f"error: {count} job(s) did not finish; see {sweep_dir}/summary.md", file=sys.stderr)
    return 1 if unfinished else 0
