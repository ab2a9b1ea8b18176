"""Contract: ``trained_model`` runs a multi-host job from the resource's hosts and reports it.

The ``trainer`` resource lists two hosts (network namespaces, reached with
``ip netns exec``) with ``min_hosts=1``. Mid-run every process of the second host is
SIGKILLed; the materialization still arrives once, and its metadata shows the world
size going from 2 to 1 and the recovery.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import dagster as dg

from orchestration.defs.registry.resources import MlflowResource
from orchestration.defs.training.assets import trained_model
from orchestration.defs.training.resources import TrainingLauncher
from orchestration.resources import MlopsHome


def _kill_host_after_checkpoint(home: Path, net, host: int, done: list, stop) -> None:
    while not stop.is_set():
        if list((home / "training").glob("*/checkpoints/step_00000010")):
            done.append(net.kill(host))
            return
        time.sleep(0.02)


def test_multihost_materialization_reports_world_size_changes(
    tmp_path, corpus, tiny_config, tr, network, monkeypatch
):
    net = network(2)
    home = tmp_path / "mlops"
    (home / "lake").mkdir(parents=True)
    os.symlink(corpus, home / "lake" / "corpus")
    monkeypatch.setenv("MLOPS_HOME", str(home))  # the registry the warm start looks in
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in tr.env().items():
        if key in ("OMP_NUM_THREADS", "PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trainer = TrainingLauncher(
        hosts=[
            {"address": h.address, "exec_prefix": net.exec_prefix(h.index), "ifname": "mh0"}
            for h in net.hosts
        ],
        min_hosts=1,
        collective_timeout_s=30,
        join_timeout_s=60,
        timeout_s=600,
    )
    killed: list = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_host_after_checkpoint, args=(home, net, 1, killed, stop))
    killer.start()
    instance = dg.DagsterInstance.ephemeral()
    try:
        result = dg.materialize(
            [trained_model],
            resources={
                "mlops": MlopsHome(home=str(home)),
                "trainer": trainer,
                "mlflow_registry": MlflowResource(),  # no champion there: trains from scratch
            },
            run_config=dg.RunConfig(
                ops={
                    "trained_model": {
                        "config": {
                            "max_steps": 40,
                            "nproc": 1,
                            "checkpoint_every": 5,
                            "config_file": str(tiny_config),
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
    assert killed and killed[0], "the second host was never killed: the run ended too early"
    (materialization,) = result.asset_materializations_for_node("trained_model")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["steps"] == 40
    assert meta["world_sizes"][0] == 2 and meta["world_sizes"][-1] == 1, meta["world_sizes"]
    assert meta["world_size_changes"] >= 1 and meta["recoveries"] >= 1
    assert meta["world_size"] == 1
