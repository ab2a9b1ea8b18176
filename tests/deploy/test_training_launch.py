"""Contract: the cluster training launchers start the training CLI correctly, with the
multi-host launcher's rendezvous and collective timeouts.

Both launchers (the Kubeflow PyTorchJob and the plain Indexed Job + headless Service) run
``torchrun ... -m training`` with c10d rendezvous on port 29400, ``--max-restarts 3``, one
process per requested GPU and as many nodes as pods. Their torchrun arguments are parsed
by torchrun's own parser; the rendezvous endpoint must name the pod that exists under that
DNS name; the training arguments carry the CLI contract (--data --output --max-steps
--checkpoint-every --seed) with data and output on the shared PVC at $MLOPS_HOME; the
mounted config file loads with the training package's own loader; and
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 is set so torchrun restarts work.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import PurePosixPath

import pytest
from torch.distributed.run import get_args_parser

from training.config import load_config
from training.launch import ElasticLaunch

CONTRACT = ("--data", "--output", "--max-steps", "--checkpoint-every", "--seed")
RDZV_PORT = 29400


def _launchers(manifests):
    """(name, pod template, node count, rendezvous host the DNS really provides)."""
    (ptj,) = manifests.of_kind("PyTorchJob")
    replicas = ptj.body["spec"]["pytorchReplicaSpecs"]
    nodes = sum(r["replicas"] for r in replicas.values())
    for role, r in replicas.items():
        # The operator names pods <job>-<role>-<index> and gives each a headless Service.
        yield f"pytorchjob-{role}", r["template"], nodes, f"{ptj.name}-master-0"
    job = manifests.get("Job", "sovereign-lm-train-indexed")
    spec = job.body["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"], "every node must run at once"
    subdomain = spec["template"]["spec"]["subdomain"]
    yield "indexed-job", spec["template"], spec["completions"], f"{job.name}-0.{subdomain}"


def _split(command):
    assert command[0] == "torchrun"
    parsed = get_args_parser().parse_args(command[1:])
    return parsed, parsed.training_script_args


def _flags(args):
    assert len(args) % 2 == 0, f"training arguments must be flag/value pairs: {args}"
    return dict(zip(args[::2], args[1::2], strict=True))


@pytest.fixture(params=["pytorchjob-Master", "pytorchjob-Worker", "indexed-job"])
def launcher(request, manifests):
    return next(item for item in _launchers(manifests) if item[0] == request.param)


def test_torchrun_topology_and_rendezvous(launcher):
    _, template, nodes, rdzv_host = launcher
    (c,) = template["spec"]["containers"]
    parsed, _ = _split(c["command"])
    assert parsed.nnodes == str(nodes)
    assert int(parsed.nproc_per_node) == int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert parsed.rdzv_backend == "c10d"
    assert parsed.rdzv_endpoint == f"{rdzv_host}:{RDZV_PORT}"
    assert parsed.max_restarts == 3
    assert parsed.module and parsed.training_script == "training"
    assert any(p["containerPort"] == RDZV_PORT for p in c["ports"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_gpu_pods_run_the_cuda_build_of_the_image(launcher):
    _, template, _, _ = launcher
    (c,) = template["spec"]["containers"]
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) > 0
    # The CPU build (the default) would run NCCL-less torch on GPU nodes.
    assert re.search(r":[^:]*-cu\d+$", c["image"]), c["image"]


def test_training_arguments_follow_the_cli_contract(launcher, manifests, tmp_path):
    _, template, _, _ = launcher
    (c,) = template["spec"]["containers"]
    _, args = _split(c["command"])
    flags = _flags(args)
    assert set(CONTRACT) <= set(flags)
    max_steps, every = int(flags["--max-steps"]), int(flags["--checkpoint-every"])
    assert 0 < every <= max_steps
    int(flags["--seed"])

    home = manifests.get("ConfigMap", "mlops-config").body["data"]["MLOPS_HOME"]
    assert flags["--data"] == f"{home}/lake/corpus"
    assert PurePosixPath(flags["--output"]).is_relative_to(home)
    # $MLOPS_HOME is one ReadWriteMany claim shared by every node, so checkpoints written by
    # one node are there for the node that replaces it.
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == home)
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    pvc = manifests.get("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert pvc.body["spec"]["accessModes"] == ["ReadWriteMany"]

    # The config file: mounted from the ConfigMap, and accepted by the training package.
    config = PurePosixPath(flags["--config"])
    mount = next(m for m in c["volumeMounts"] if config.is_relative_to(m["mountPath"]))
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    data = manifests.get("ConfigMap", volume["configMap"]["name"]).body["data"]
    local = tmp_path / config.name
    local.write_text(data[str(config.relative_to(mount["mountPath"]))])
    cfg = load_config(local, max_steps=max_steps, checkpoint_every=every, seed=int(flags["--seed"]))
    assert (cfg.max_steps, cfg.checkpoint.every) == (max_steps, every)


def test_indexed_job_rendezvous_host_is_published_before_ready(manifests):
    job = manifests.get("Job", "sovereign-lm-train-indexed")
    service = manifests.get("Service", job.body["spec"]["template"]["spec"]["subdomain"])
    spec = service.body["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert spec["selector"].items() <= job.body["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in spec["ports"]] == [RDZV_PORT]


def test_training_cli_accepts_the_flags(manifests, repo):
    """Ask the training program itself: every flag the launchers pass is in its --help."""
    proc = subprocess.run(
        [sys.executable, "-m", "training", "--help"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    accepted = set(re.findall(r"--[a-z][a-z-]*", proc.stdout))
    for name, template, _, _ in _launchers(manifests):
        (c,) = template["spec"]["containers"]
        for flag in _flags(_split(c["command"])[1]):
            assert flag in accepted, f"{name}: training CLI has no {flag}"


def test_elastic_timeouts_match_the_multihost_launcher(launcher):
    """The manifests bound every rendezvous wait and collective as ``ElasticLaunch`` does."""
    _, template, _, _ = launcher
    (c,) = template["spec"]["containers"]
    parsed, args = _split(c["command"])
    defaults = ElasticLaunch(endpoint=parsed.rdzv_endpoint, min_hosts=1, max_hosts=2)
    assert parsed.rdzv_conf == defaults.rdzv_conf()
    assert parsed.monitor_interval == defaults.monitor_interval_s
    assert float(_flags(args)["--collective-timeout-s"]) == defaults.collective_timeout_s
