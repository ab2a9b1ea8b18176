"""Fixtures for registry tests: a real ``mlflow server`` per module (SQLite or PostgreSQL
backend store), reference models, evaluated reports, and a CLI runner for subprocesses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import deltalake
import httpx
import psycopg2
import pyarrow as pa
import pytest
from safetensors.torch import load_file, save_file

from evaluation import EvaluationConfig, GateConfig, evaluate
from evaluation.reference_model import build_reference_model
from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records
from registry import RegistryClient, RegistryConfig

REPO = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("MLOPS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MlflowServer:
    url: str
    backend: str  # "sqlite" or "postgres"
    backend_uri: str
    lock_url: str
    artifacts: Path
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        cmd = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        # generous: on a shared, loaded CPU the server's start-up alone has taken over 120 s
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server not ready in 300s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=10)

    def config(self, model_name: str, **overrides) -> RegistryConfig:
        return RegistryConfig(
            tracking_uri=self.url,
            model_name=model_name,
            experiment=model_name,
            lock_url=self.lock_url,
            **overrides,
        )


def _pg_admin(sql: str) -> None:
    conn = psycopg2.connect(PG_URL, connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def mlflow_server(request, tmp_path_factory):
    """A real ``mlflow server`` on a free loopback port, one per module and backend."""
    root = tmp_path_factory.mktemp(f"mlflow-{request.param}")
    if request.param == "sqlite":
        backend_uri = f"sqlite:///{root / 'mlflow.db'}"
        lock_url, database = str(root / "promotion.lock"), None
    else:
        database = f"mlops_registry_{uuid.uuid4().hex[:12]}"
        _pg_admin(f"CREATE DATABASE {database}")
        lock_url = PG_URL.rsplit("/", 1)[0] + f"/{database}"
        # SQLAlchemy 2.1 defaults to psycopg 3; the project ships psycopg2.
        backend_uri = lock_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    server = MlflowServer(
        url=f"http://127.0.0.1:{free_port()}",
        backend=request.param,
        backend_uri=backend_uri,
        lock_url=lock_url,
        artifacts=root / "artifacts",
        log=root / "server.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if database:
            _pg_admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@pytest.fixture
def model_name(request) -> str:
    """A registered-model name of its own per test, so tests sharing a server never interact."""
    return f"sovereign-lm-{request.node.name}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace(
        "]", ""
    )


@pytest.fixture
def client(mlflow_server, model_name) -> RegistryClient:
    return RegistryClient(mlflow_server.config(model_name))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "corpus-registry"
    if not path.exists():
        texts = [normalise_text(r["text"]) for r in generate_records(4000, seed=7)]
        table = pa.table({"record_id": [record_id(t) for t in texts], "text": texts})
        deltalake.write_deltalake(str(path), table)
    return path


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    return build_reference_model(tmp_path_factory.getbasetemp() / "reference-untrained")


@pytest.fixture
def variant(untrained_model, tmp_path):
    """``variant(i)``: a copy of the reference model with the i-th distinct weight perturbation,
    so each registered version is a different artifact (different digest)."""

    def make(i: int) -> Path:
        out = tmp_path / f"variant-{i}"
        if out.exists():
            return out
        shutil.copytree(untrained_model, out)
        weights = load_file(out / "model.safetensors")
        key = sorted(weights)[0]
        weights[key] = weights[key] + 1e-4 * i
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
        return out

    return make


@pytest.fixture
def report_for(corpus):
    """``report_for(model_dir, against=None, floors=False)``: a real evaluation report.

    Registry tests use untrained reference models (no training time), so the gate's absolute
    floors are off unless ``floors=True``; ``against`` is the champion version the gate
    compared with (the model is compared with itself as that champion)."""

    def make(model_dir: Path, against: str | None = None, floors: bool = False):
        gate = GateConfig() if floors else GateConfig(min_exact_match=0.0, max_perplexity=1e9)
        cfg = EvaluationConfig(max_examples=20, gate=gate)
        if against is None:
            return evaluate(model_dir, corpus, 0, cfg)
        return evaluate(model_dir, corpus, 0, cfg, champion_dir=model_dir, champion_version=against)

    return make


@pytest.fixture
def cli(mlflow_server, model_name, tmp_path):
    """Run ``python -m registry ...`` in a subprocess against the test's server and model."""

    def run(*args: str, env: dict[str, str] | None = None, background: bool = False):
        full_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MLFLOW_TRACKING_URI": mlflow_server.url,
            "MLOPS_REGISTRY_LOCK_URL": mlflow_server.lock_url,
            "MLOPS_HOME": str(tmp_path / "mlops"),
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        }
        # a fault point needs the CLI with the crash hook (not shipped with the product)
        module = "testing.registry_crash" if "MLOPS_REGISTRY_FAULT" in (env or {}) else "registry"
        cmd = [sys.executable, "-m", module, "--model", model_name, "--actor", "test", *args]
        if background:
            return subprocess.Popen(
                cmd,
                env=full_env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        return subprocess.run(
            cmd, env=full_env, cwd=REPO, capture_output=True, text=True, timeout=120
        )

    return run
