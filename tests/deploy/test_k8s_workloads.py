"""Contract: each cluster workload is started the way the product expects.

Gateway: ``python -m serving.gateway --host 0.0.0.0 --port P --advertise-host $(POD_IP)`` with
the admin token and the PostgreSQL state URL from Secrets and no state volume, three replicas
rolled one at a time, a PDB keeping two, an autoscaler on CPU, scraped by Prometheus. vLLM:
``vllm serve /models/<alias> --served-model-name sovereign-lm --port P``, stable on the
champion and canary on the challenger, one GPU each, one Service each. MLflow: the
manifest's own ``mlflow server`` arguments, run for real on loopback (SQLite and a local
directory standing in for PostgreSQL and S3), accept the in-cluster host names the
tracking URI uses, refuse other Host headers, and answer the probe path.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest


def _container(doc, name=None):
    containers = doc.body["spec"]["template"]["spec"]["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def _port(container, name="http"):
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def _mlops_home(manifests):
    return manifests.get("ConfigMap", "mlops-config").body["data"]["MLOPS_HOME"]


def test_gateway_command_state_and_scraping(manifests):
    gateway = manifests.get("Deployment", "gateway")
    c = _container(gateway)
    port = _port(c)
    assert c["command"] == [
        "python",
        "-m",
        "serving.gateway",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--advertise-host",
        "$(POD_IP)",
    ]
    env = {e["name"]: e for e in c["env"]}
    assert env["MLOPS_GATEWAY_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "gateway-admin"
    state = env["MLOPS_GATEWAY_STATE_URL"]["valueFrom"]["secretKeyRef"]
    assert state == {"name": "gateway-state", "key": "MLOPS_GATEWAY_STATE_URL"}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    annotations = gateway.body["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_gateway_scales_out_without_a_state_volume(manifests):
    gateway = manifests.get("Deployment", "gateway")
    spec = gateway.body["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    volumes = spec["template"]["spec"]["volumes"]
    assert all("persistentVolumeClaim" not in v for v in volumes)
    assert [d.name for d in manifests.of_kind("PersistentVolumeClaim")].count("gateway-state") == 0
    labels = spec["template"]["metadata"]["labels"].items()
    pdb = manifests.get("PodDisruptionBudget", "gateway").body["spec"]
    assert pdb["minAvailable"] == 2 and "maxUnavailable" not in pdb
    assert pdb["selector"]["matchLabels"].items() <= labels
    hpa = manifests.get("HorizontalPodAutoscaler", "gateway").body["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["minReplicas"] == spec["replicas"] > pdb["minAvailable"]
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    assert _container(gateway)["resources"]["requests"]["cpu"]  # utilisation needs a request


@pytest.mark.parametrize(("track", "alias"), [("stable", "champion"), ("canary", "challenger")])
def test_vllm_engine_serves_its_alias(manifests, track, alias):
    engine = manifests.get("Deployment", f"vllm-{track}")
    c = _container(engine, "vllm")
    port = _port(c)
    cmd = c["command"]
    assert cmd[:3] == ["vllm", "serve", f"/models/{alias}"]
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert flags == {
        "--served-model-name": "sovereign-lm",
        "--host": "0.0.0.0",
        "--port": str(port),
    }
    models = next(m for m in c["volumeMounts"] if m["mountPath"] == "/models")
    assert models.get("readOnly") is True
    gpus = c["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) >= 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    service = manifests.get("Service", f"vllm-{track}")
    selected = [
        d
        for d in manifests.of_kind("Deployment")
        if service.body["spec"]["selector"].items()
        <= d.body["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert selected == [engine], "each engine Service must reach exactly its own Deployment"


# --- MLflow -------------------------------------------------------------------------------


def _mlflow_args(manifests):
    c = _container(manifests.get("Deployment", "mlflow"))
    assert c["command"][:2] == ["mlflow", "server"]
    args = c["command"][2:]
    return c, {
        a: (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None)
        for i, a in enumerate(args)
        if a.startswith("--")
    }


def test_mlflow_uses_postgres_secret_and_proxied_object_store(manifests):
    c, flags = _mlflow_args(manifests)
    assert flags["--backend-store-uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    secret = manifests.get("Secret", "mlflow-backend-store").body["stringData"]
    assert secret["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "--serve-artifacts" in flags
    assert flags["--artifacts-destination"].startswith("s3://")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"} <= set(
        manifests.container_env(c)
    )
    init = manifests.get("Deployment", "mlflow").body["spec"]["template"]["spec"]["initContainers"][
        0
    ]
    assert init["command"] == ["mlflow", "db", "upgrade", "$(MLFLOW_BACKEND_STORE_URI)"]


def test_tracking_uri_names_the_mlflow_service(manifests):
    uri = urlparse(manifests.get("ConfigMap", "mlops-config").body["data"]["MLFLOW_TRACKING_URI"])
    service = manifests.get("Service", "mlflow")
    assert uri.hostname == f"mlflow.{service.namespace}.svc.cluster.local"
    assert uri.port == service.body["spec"]["ports"][0]["port"]
    _, flags = _mlflow_args(manifests)
    assert uri.netloc in flags["--allowed-hosts"].split(",")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server_runs_with_the_manifest_arguments(manifests, tmp_path):
    _, flags = _mlflow_args(manifests)
    port = _free_port()
    # The manifest's arguments, with loopback and local stand-ins for PostgreSQL and S3.
    local = dict(
        flags,
        **{
            "--host": "127.0.0.1",
            "--port": str(port),
            "--workers": "1",
            "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination": (tmp_path / "artifacts").as_uri(),
        },
    )
    argv = [a for k, v in local.items() for a in ((k,) if v is None else (k, v))]
    mlflow = Path(sys.executable).with_name("mlflow")
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_TRACKING_URI="")
    log = (tmp_path / "mlflow.log").open("wb")
    proc = subprocess.Popen(
        [str(mlflow), "server", *argv], env=env, stdout=log, stderr=log, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
            try:
                # The kubelet probes with Host: <pod IP>; /health must not care.
                if (
                    httpx.get(
                        f"{base}/health", headers={"Host": "10.244.1.7:5000"}, timeout=2
                    ).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not become healthy"
            time.sleep(0.5)
        api = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        ok = httpx.get(
            api, headers={"Host": "mlflow.sovereign-mlops.svc.cluster.local:5000"}, timeout=10
        )
        assert ok.status_code == 200, ok.text
        refused = httpx.get(api, headers={"Host": "mlflow.attacker.example"}, timeout=10)
        assert refused.status_code == 403
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
        log.close()
