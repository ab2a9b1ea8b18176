"""Contract: the ``trained_model`` Dagster asset launches torchrun under Pipes and reports back.

Materialized with ``dagster.materialize`` over a small Delta corpus in a temporary
``MLOPS_HOME``. Rank 0 is SIGKILLed mid-run: torchrun restarts it, the restarted rank 0
re-opens the Pipes session, and the materialization still arrives once, carrying model
path, data version, steps, final loss, throughput and wall time. Also checks the asset's
place in the graph (group, upstream ``corpus_split``, retry policy).
"""

from __future__ import annotations

import glob
import os
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import deltalake

from orchestration.defs.registry.resources import MlflowResource
from orchestration.defs.training import defs
from orchestration.defs.training.assets import trained_model
from orchestration.defs.training.resources import TrainingLauncher
from orchestration.resources import MlopsHome


def _kill_rank0_after_first_checkpoint(
    home: Path, tr, killed: list[int], stop: threading.Event
) -> None:
    while not stop.is_set():
        found = glob.glob(str(home / "training" / "*" / "checkpoints" / "step_00000010"))
        if found:
            output = Path(found[0]).parents[1]
            pid = tr.worker_pid(output, 0)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.01)


def test_materialize_with_rank0_killed_reports_metadata(
    tmp_path, corpus, tiny_config, tr, monkeypatch
):
    home = tmp_path / "mlops"
    (home / "lake").mkdir(parents=True)
    os.symlink(corpus, home / "lake" / "corpus")
    for key, value in tr.env().items():
        if key in ("OMP_NUM_THREADS", "PYTHONPATH", "HF_HUB_OFFLINE"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_rank0_after_first_checkpoint, args=(home, tr, killed, stop)
    )
    killer.start()
    instance = dg.DagsterInstance.ephemeral()
    try:
        result = dg.materialize(
            [trained_model],
            resources={
                "mlops": MlopsHome(home=str(home)),
                "trainer": TrainingLauncher(),
                "mlflow_registry": MlflowResource(),
            },
            run_config=dg.RunConfig(
                ops={
                    "trained_model": {
                        "config": {
                            "max_steps": 60,
                            "nproc": 2,
                            "checkpoint_every": 10,
                            "seed": 0,
                            "init": "scratch",
                            "config_file": str(tiny_config),
                            "max_restarts": 2,
                        }
                    }
                }
            ),
            instance=instance,
        )
    finally:
        stop.set()
        killer.join()
    assert result.success
    assert killed, "rank 0 was never killed: the run ended too early"
    materializations = result.asset_materializations_for_node("trained_model")
    assert len(materializations) == 1
    meta = {k: v.value for k, v in materializations[0].metadata.items()}
    output = home / "training" / result.run_id
    assert meta["model_path"] == str(output / "model")
    assert (output / "model" / "model.safetensors").is_file()
    assert meta["data_version"] == deltalake.DeltaTable(str(corpus)).version()
    assert meta["steps"] == 60 and meta["restarts"] == 1
    assert (meta["seed"], meta["seed_pinned"], meta["init"]) == (0, True, "scratch")
    assert meta["final_loss"] > 0 and meta["tokens_per_s"] > 0 and meta["wall_time_s"] > 0
    assert meta["loss_curve"].startswith("![loss curve](data:image/png;base64,")
    assert meta["loss_curve_path"] == str(output / "loss_curve.png")
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("training started (restart 0)" in m for m in messages)
    assert any("training started (restart 1)" in m for m in messages), "restarted rank 0 is silent"
    assert any("step 60/60 loss" in m for m in messages)


def test_asset_graph():
    # The root definitions provide the shared ``mlops`` resource; stand in for them here.
    merged = dg.Definitions.merge(
        defs, dg.Definitions(resources={"mlops": MlopsHome(), "mlflow_registry": MlflowResource()})
    )
    repo = merged.get_repository_def()
    spec = repo.assets_defs_by_key[dg.AssetKey("trained_model")]
    assert spec.group_names_by_key[dg.AssetKey("trained_model")] == "training"
    assert dg.AssetKey("corpus_split") in spec.asset_deps[dg.AssetKey("trained_model")]
    assert (
        trained_model.op.retry_policy is not None and trained_model.op.retry_policy.max_retries >= 1
    )
    assert isinstance(defs.resources["trainer"], TrainingLauncher)


def test_launch_command_sets_the_restart_fix():
    launcher = TrainingLauncher(torchrun="/opt/torchrun", timeout_s=99)
    cmd = launcher.command(
        data=Path("/lake/corpus"),
        output=Path("/out"),
        nproc=2,
        max_steps=5,
        checkpoint_every=1,
        seed=3,
        engine="ddp",
        max_restarts=2,
    )
    assert cmd[cmd.index("/opt/torchrun") + 1 :][:5] == [
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "2",
    ]
    assert launcher.env()["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_unpinned_seed_varies_across_runs_and_is_stable_within_one():
    from orchestration.defs.training.parent import run_seed

    seeds = {run_seed(f"run-{i}") for i in range(50)}
    assert len(seeds) == 50 and all(0 <= s < 2**31 for s in seeds)
    assert run_seed("run-7") == run_seed("run-7")  # a retry of the run resumes its checkpoints
