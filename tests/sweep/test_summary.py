"""`tic-grpo sweep`: aggregation of job dirs by hand, launcher and preset
configs, and whole sweeps through the CLI (a stand-in trainer in-process, the real one in a
subprocess)."""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tic_grpo_cli.config.validation import validate_train
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.sweep import summary as sweep
from tic_grpo_cli.sweep.jobs import record_failure

T2, T1 = 4.302653, 12.706205  # t(0.975, df) for df = 2 and 1, from printed tables
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_job(root: Path, overrides: list[str], summary=None, evals=(), rewards=()) -> Path:
    """A job dir as Hydra and the trainer leave it; no summary = killed (incomplete)."""
    job = root / ",".join(overrides)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    rows = [{"step": s, "reward/mean": r} for s, r in rewards]
    rows += [{"step": s, "eval/accuracy": a} for s, a in evals]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    return job


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def summary_of(final, best, reward, wall, tps):
    return {
        "final/eval_accuracy": final,
        "best/eval_accuracy": best,
        "final/reward": reward,
        "steps": 12,
        "wall_time_s": wall,
        "throughput/tokens_per_s": tps,
        "steps_to_threshold": None,
    }


@pytest.fixture
def hand_made_sweep(tmp_path):
    """grpo: 3 finished seeds. tic: 2 finished, 1 failed, 1 killed. max_steps common to all."""
    common = ["trainer.max_steps=12"]
    grpo = [  # seed, final acc, best acc, final reward, wall time, tokens/s, step reaching 0.5
        (0, 0.2, 0.5, 0.1, 10.0, 100.0, 4),
        (1, 0.4, 0.6, 0.2, 20.0, 200.0, 8),
        (2, 0.6, 0.7, 0.3, 30.0, 300.0, 12),
    ]
    for seed, final, best, reward, wall, tps, reach in grpo:
        evals = [(0, 0.0), (reach - 2, 0.45), (reach, 0.5 + 0.01 * seed)]
        make_job(
            tmp_path,
            ["algorithm=grpo", f"seed={seed}", *common],
            summary_of(final, best, reward, wall, tps),
            evals=evals,
            rewards=[(s, 0.1 * s + seed) for s in range(1, 13)],
        )
    # tic seed 1 never reaches 0.5: its steps-to-threshold is left out of the mean.
    for seed, final in ((0, 0.5), (1, 0.7)):
        evals = [(0, 0.0), (6, 0.6)] if seed == 0 else [(0, 0.0), (6, 0.49)]
        make_job(
            tmp_path,
            ["algorithm=tic", f"seed={seed}", *common],
            summary_of(final, final, float("nan"), 5.0, 50.0),
            evals=evals,
            rewards=[(s, 0.05 * s) for s in range(1, 13)],
        )
    failed = make_job(tmp_path, ["algorithm=tic", "seed=2", *common])
    try:
        raise RuntimeError("loss is nan | at step 3")
    except RuntimeError as err:
        record_failure(failed, err)
    make_job(tmp_path, ["algorithm=tic", "seed=3", *common], evals=[(0, 0.0)])
    return tmp_path


def test_summary_means_and_t_intervals_by_hand(hand_made_sweep):
    rows = {r["config"]: r for r in sweep.summarize(hand_made_sweep, threshold=0.5)}
    assert list(rows) == ["algorithm=grpo", "algorithm=tic"]
    grpo, tic = rows["algorithm=grpo"], rows["algorithm=tic"]
    assert (grpo["finished"], grpo["failed"], grpo["incomplete"]) == (3, 0, 0)
    assert (tic["finished"], tic["failed"], tic["incomplete"]) == (2, 1, 1)
    assert grpo["seeds"] == "0 1 2" and tic["seeds"] == "0 1"

    # grpo final accuracy 0.2, 0.4, 0.6: mean 0.4, std 0.2, half-width t(0.975, 2)·0.2/√3.
    half = T2 * 0.2 / math.sqrt(3)
    assert grpo["final_eval_accuracy_mean"] == pytest.approx(0.4)
    assert grpo["final_eval_accuracy_std"] == pytest.approx(0.2)
    assert grpo["final_eval_accuracy_ci95_low"] == pytest.approx(0.4 - half, abs=1e-6)
    assert grpo["final_eval_accuracy_ci95_high"] == pytest.approx(0.4 + half, abs=1e-6)
    # best 0.5, 0.6, 0.7 -> std 0.1; reward 0.1..0.3; wall 10..30 -> std 10; tokens/s std 100.
    assert grpo["best_eval_accuracy_mean"] == pytest.approx(0.6)
    assert grpo["best_eval_accuracy_ci95_high"] == pytest.approx(0.6 + T2 * 0.1 / math.sqrt(3))
    assert grpo["final_reward_mean"] == pytest.approx(0.2)
    assert grpo["wall_time_s_std"] == pytest.approx(10.0)
    assert grpo["tokens_per_s_ci95_low"] == pytest.approx(200 - T2 * 100 / math.sqrt(3))
    # Reached 0.5 at steps 4, 8, 12: mean 8, std 4.
    assert grpo["reached_threshold"] == "3/3"
    assert grpo["steps_to_threshold_mean"] == pytest.approx(8.0)
    assert grpo["steps_to_threshold_ci95_high"] == pytest.approx(
        8 + T2 * 4 / math.sqrt(3), abs=1e-5
    )

    # tic final 0.5, 0.7: mean 0.6, std √0.02, half-width t(0.975, 1)·√0.02/√2 = 12.706205·0.1.
    assert tic["final_eval_accuracy_mean"] == pytest.approx(0.6)
    assert tic["final_eval_accuracy_std"] == pytest.approx(math.sqrt(0.02))
    assert tic["final_eval_accuracy_ci95_low"] == pytest.approx(0.6 - T1 * 0.1, abs=1e-6)
    # NaN rewards are missing values, not a NaN mean; one seed reached 0.5 (step 6).
    assert tic["final_reward_mean"] is None
    assert tic["reached_threshold"] == "1/2"
    assert tic["steps_to_threshold_mean"] == 6.0 and tic["steps_to_threshold_std"] is None
    assert "seed=2: RuntimeError: loss is nan | at step 3" in tic["errors"]
    assert "seed=3: incomplete" in tic["errors"]


def test_summary_files(hand_made_sweep, capsys):
    sweep.summarize(hand_made_sweep, threshold=0.5)
    table = read_csv(hand_made_sweep / "summary.csv")
    assert [r["config"] for r in table] == ["algorithm=grpo", "algorithm=tic"]
    assert float(table[0]["final_eval_accuracy_std"]) == pytest.approx(0.2)

    md = (hand_made_sweep / "summary.md").read_text()
    assert "Student-t" in md and "Common overrides: trainer.max_steps=12" in md
    assert "| algorithm=grpo | 3 (0,1,2) | 0.400 ± 0.200 [-0.097, 0.897] |" in md
    assert (
        "| algorithm=tic,seed=2,trainer.max_steps=12 | failed | RuntimeError: loss is nan \\| at step 3 |"
        in md
    )
    assert "| algorithm=tic,seed=3,trainer.max_steps=12 | incomplete |" in md

    assert (hand_made_sweep / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    out = capsys.readouterr().out
    assert "algorithm=grpo" in out and "0.400 ± 0.200" in out and "failed" in out
    # Written atomically: no temporary files left behind.
    assert not list(hand_made_sweep.glob(".*.tmp"))


def test_threshold_is_chosen_at_aggregation(hand_made_sweep):
    rows = sweep.summarize(hand_made_sweep, threshold=0.45)
    assert rows[0]["steps_to_threshold_mean"] == pytest.approx(6.0)  # 2, 6, 10


def test_only_seeds_swept_is_one_configuration(tmp_path):
    for seed in (0, 1):
        make_job(tmp_path, ["algorithm=tic", f"seed={seed}"], summary_of(0.5, 0.5, 0.1, 1, 1))
    (row,) = sweep.summarize(tmp_path)
    assert row["config"] == "algorithm=tic" and row["finished"] == 2


def test_dir_without_jobs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no sweep jobs"):
        sweep.summarize(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        sweep.summarize(tmp_path / "missing")


def test_callback_summarises_the_sweep_dir(hand_made_sweep):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(hand_made_sweep)}}})
    sweep.SummarizeSweep(threshold=0.5).on_multirun_end(config)
    assert (hand_made_sweep / "summary.md").exists()


def test_module_import_stays_light():
    code = (
        "import sys, tic_grpo_cli.sweep.summary, tic_grpo_cli.sweep.jobs, tic_grpo_cli.sweep.report; "
        "print(sorted(m for m in ('torch', 'matplotlib', 'rich') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- configs --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train", "sweep"])
def test_callback_is_registered(name):
    cfg = compose_config(name=name, hydra=True)
    callback = instantiate(cfg.hydra.callbacks.summarize)
    assert isinstance(callback, sweep.SummarizeSweep) and callback.threshold == 0.5


def test_default_launcher_is_sequential():
    cfg = compose_config(name="sweep", hydra=True)
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")


@pytest.mark.parametrize("launcher", ["joblib", "local_parallel"])
def test_joblib_launcher_composes(launcher):
    cfg = compose_config(f"hydra/launcher={launcher}", name="sweep", hydra=True)
    assert cfg.hydra.launcher._target_ == (
        "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    )
    if launcher == "local_parallel":
        # Two jobs on two cores, one thread each.
        assert cfg.hydra.launcher.n_jobs == 2
        assert cfg.hydra.job.env_set.OMP_NUM_THREADS == "1"
        assert cfg.hydra.job.env_set.MKL_NUM_THREADS == "1"


def test_slurm_config_composes():
    cfg = compose_config("hardware=slurm", "hydra.launcher.partition=gpu", name="sweep", hydra=True)
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1
    assert launcher.timeout_min > 0 and launcher.cpus_per_task >= 1
    assert cfg.hardware.device == "cuda"
    validate_train(cfg)


@pytest.mark.parametrize(
    "preset,algorithms",
    [
        ("paper_fig1", {"grpo", "grpo_no_is"}),
        ("paper_table2", {"grpo", "ub_clip", "traj_is", "tic"}),
    ],
)
@pytest.mark.parametrize("name", ["train", "sweep"])
def test_experiment_presets_set_their_grid(name, preset, algorithms):
    cfg = compose_config(f"experiment={preset}", name=name, hydra=True)
    params = cfg.hydra.sweeper.params
    assert set(params.algorithm.split(",")) == algorithms
    assert len(params.seed.split(",")) >= 3
    # K = 4 minibatches per rollout batch, as in the paper.
    assert cfg.trainer.rollout_batch_size // cfg.trainer.minibatch_size == 4
    validate_train(cfg)


def test_optuna_example_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_config("hydra/sweeper=optuna_accuracy", name="train", hydra=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize"
    assert "trainer.lr" in cfg.hydra.sweeper.params


# ---- whole sweeps through the CLI -----------------------------------------------------


@pytest.fixture
def stand_in_trainer(monkeypatch):
    """Replaces tic_grpo_cli.train.loop in this process: tic with seed 1 fails, others finish."""
    calls: list[str] = []

    def train(cfg, run_dir):
        calls.append(f"{cfg.algorithm.name}/{cfg.seed}")
        if cfg.algorithm.name == "tic" and cfg.seed == 1:
            raise RuntimeError("diverged")
        rows = [{"step": s, "reward/mean": 0.1 * s} for s in range(1, cfg.trainer.max_steps + 1)]
        rows += [{"step": s, "eval/accuracy": 0.2 * s} for s in (2, 4)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = summary_of(0.8, 0.8, 0.4, 1.0, 10.0)
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    module = types.ModuleType("tic_grpo_cli.train.loop")
    module.train = train
    monkeypatch.setitem(sys.modules, "tic_grpo_cli.train.loop", module)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    return calls


def test_sweep_isolates_failures_and_skips_finished_jobs(tmp_path, stand_in_trainer, capsys):
    from tic_grpo_cli.cli import main

    args = [
        "sweep",
        "algorithm=grpo,tic",
        "seed=0,1",
        "trainer.max_steps=4",
        f"hydra.sweep.dir={tmp_path}",
    ]
    assert main(args) == 1  # the others finish, but the sweep as a whole did not succeed
    assert f"error: 1 job(s) did not finish; see {tmp_path}/summary.md" in capsys.readouterr().err
    assert sorted(stand_in_trainer) == ["grpo/0", "grpo/1", "tic/0", "tic/1"]
    assert (tmp_path / "algorithm=tic,seed=1,trainer.max_steps=4" / "error.json").exists()
    md = (tmp_path / "summary.md").read_text()
    assert "| failed | RuntimeError: diverged |" in md
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_SIGNATURE

    # The same sweep again: only the failed job runs; skip_finished=false runs them all.
    stand_in_trainer.clear()
    assert main(args) == 1
    assert stand_in_trainer == ["tic/1"]
    stand_in_trainer.clear()
    assert main([*args, "sweep.skip_finished=false"]) == 1
    assert len(stand_in_trainer) == 4

    # Aggregating the dir later gives the same rows.
    rows = sweep.summarize(tmp_path)
    assert [(r["config"], r["finished"], r["failed"]) for r in rows] == [
        ("algorithm=grpo", 2, 0),
        ("algorithm=tic", 1, 1),
    ]
    # Without the failing job (in a dir of its own) the sweep succeeds.
    assert main(["sweep", "algorithm=grpo", f"hydra.sweep.dir={tmp_path}_ok"]) == 0


def test_an_interrupted_job_stops_the_whole_sweep(tmp_path, stand_in_trainer, capsys):
    from tic_grpo_cli.cli import main
    from tic_grpo_cli.errors import Interrupted

    module = sys.modules["tic_grpo_cli.train.loop"]
    finishing = module.train

    def train(cfg, run_dir):
        if cfg.seed == 1:
            stand_in_trainer.append(f"{cfg.algorithm.name}/{cfg.seed}")
            raise Interrupted("interrupted at step 2; checkpoint x")
        return finishing(cfg, run_dir)

    module.train = train
    with pytest.raises(SystemExit) as stopped:
        main(["sweep", "algorithm=grpo", "seed=0,1,2", f"hydra.sweep.dir={tmp_path}"])
    assert stopped.value.code == 130  # SIGINT's, not a bad command's 2
    assert stand_in_trainer == ["grpo/0", "grpo/1"]  # seed 2 never started
    err = capsys.readouterr().err
    assert err.strip().startswith("interrupted at step 2") and "The sweep stops here" in err
    assert not list(tmp_path.glob("*seed=1*/error.json"))  # incomplete, not failed
    # The command it prints continues the sweep: seed 0 is skipped, 1 resumed, 2 run.
    command = err.strip().split("continue it with: ", 1)[1]
    program, args = command.split(" sweep ", 1)  # tic-grpo, or python -m tic_grpo_cli here
    assert f"hydra.sweep.dir={tmp_path}" in args and program.endswith(("tic-grpo", "tic_grpo_cli"))
    module.train = finishing
    assert main(["sweep", *shlex.split(args)]) == 0
    assert stand_in_trainer == ["grpo/0", "grpo/1", "grpo/1", "grpo/2"]


def test_sweep_aggregate_subcommand(
    hand_made_sweep, stand_in_trainer, monkeypatch, tmp_path_factory
):
    from tic_grpo_cli.cli import main

    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # Hydra's own run dir lands here
    (hand_made_sweep / "summary.csv").unlink(missing_ok=True)
    assert main(["sweep", f"aggregate={hand_made_sweep}"]) == 0
    assert (hand_made_sweep / "summary.csv").exists() and stand_in_trainer == []


def tic_grpo_command() -> list[str]:
    script = Path(sys.executable).with_name("tic-grpo")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tic_grpo_cli"]


@pytest.mark.slow
def test_real_two_by_two_sweep(tmp_path):
    """Four short real training jobs through the console script: about a minute on 2 cores."""
    try:
        import tic_grpo_cli.train.loop  # noqa: F401
    except ImportError as err:
        pytest.skip(f"trainer not available: {err}")
    from tic_grpo_cli.assets import TINY_DIR

    if not (TINY_DIR / "config.json").exists():
        pytest.skip("the embedded tiny model is not built (scripts/build_tiny_model.py)")
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(
        [
            *tic_grpo_command(),
            "sweep",
            "algorithm=grpo,tic",
            "seed=0,1",
            "trainer.max_steps=4",
            "trainer.eval_every=2",
            "trainer.eval_limit=16",
            "trainer.rollout_batch_size=4",
            "trainer.minibatch_size=2",
            "trainer.group_size=4",
            "trainer.save_every=0",
            "wandb.mode=disabled",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["config"], r["finished"]) for r in rows] == [
        ("algorithm=grpo", "2"),
        ("algorithm=tic", "2"),
    ], [r["errors"] for r in rows]
    assert "| algorithm=grpo | 2 (0,1) |" in (sweep_dir / "summary.md").read_text()
    assert (sweep_dir / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
