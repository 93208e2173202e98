"""Starting the ranks: one process needs none, torchrun's rendezvous on one machine or a SLURM job."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config
from tic_grpo_cli.config.validation import validate_train
from tic_grpo_cli.errors import UserError
from tic_grpo_cli.runtime import distributed, launch


def test_single_process_handle_is_the_identity(monkeypatch):
    for name in launch.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    dist = launch.setup(compose_config().hardware)
    assert dist == distributed.SINGLE and dist.is_main and not dist.active
    assert dist.average(0.25) == 0.25 and dist.any(True) and dist.share(6, "x") == 6
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.average_stats({"x_max": 2.0}) == {"x_max": 2.0}


def test_ddp_outside_torchrun_says_how_to_launch(monkeypatch):
    for name in launch.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="torchrun"):
        launch.setup(compose_config("hardware=ddp").hardware)


def test_one_machine_rendezvous_is_local(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_NUM_NODES", raising=False)
    assert launch.rendezvous()[:2] == (1, "localhost:0")


def test_slurm_job_of_two_nodes_meets_on_its_first_node(monkeypatch):
    pytest.importorskip("submitit")
    for name, value in {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2",
                        "SLURM_JOB_NODELIST": "gpu[07-08]"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    nodes, endpoint, run_id = launch.rendezvous()
    assert nodes == 2 and endpoint.startswith("gpu07:") and run_id == "slurm-4242"
    assert launch.rendezvous() == (nodes, endpoint, run_id)  # the same on every node


def test_multi_node_fsdp_job_on_slurm_composes():
    cfg = compose_config("hardware=slurm", "hardware.distributed=fsdp", "hardware.nproc_per_node=8",
                        "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=8", hydra=True)  # fmt: skip
    validate_train(cfg)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    # One task per node: each starts that node's ranks (launch.launch).
    assert launcher.nodes == 2 and launcher.tasks_per_node == 1
    assert (
        cfg.hardware.distributed == "fsdp" and cfg.hardware.nproc_per_node == launcher.gpus_per_node
    )


# ---- older torch (the oldest accepted is 2.6) ------------------------------------------


@pytest.mark.parametrize("has_grace_field", [True, False])
def test_launcher_gives_ranks_their_grace_only_where_torch_has_the_field(
    monkeypatch, tmp_path, has_grace_field
):
    import dataclasses

    import torch.distributed.launcher.api as api

    fields = [f for f in dataclasses.fields(api.LaunchConfig) if f.name != "shutdown_timeout"]
    # torch 2.6's LaunchConfig: the same fields without shutdown_timeout.
    old = dataclasses.make_dataclass(
        "LaunchConfig", [(f.name, f.type, f) for f in fields], kw_only=True
    )
    config_class = api.LaunchConfig if has_grace_field else old
    seen = []
    monkeypatch.setattr(api, "LaunchConfig", config_class)
    monkeypatch.setattr(api, "elastic_launch", lambda config, exe: lambda *a: seen.append(config))
    assert launch.launch(2, ["-m", "tic_grpo_cli"], tmp_path) == {}
    assert getattr(seen[0], "shutdown_timeout", None) == (
        launch.SHUTDOWN_SECONDS if has_grace_field else None
    )
