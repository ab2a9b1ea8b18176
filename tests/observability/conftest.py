"""Fixtures for the log tests: a registered model version, a tiny corpus, a JSON log reader.

The model is the random-weight reference model, registered in a real MLflow store under
a tmp ``MLOPS_HOME`` and fetched back the way the serving stack fetches a version, so the
engine sees the same directory layout as in production.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def json_lines(text: str) -> list[dict]:
    """Every non-empty line of ``text`` as JSON; fails naming the first line that is not."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line!r}\n--- whole output:\n{text[-4000:]}")
    return records


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for key in ("MLFLOW_TRACKING_URI", "DAGSTER_PIPES_CONTEXT", "DAGSTER_RUN_ID"):
        env.pop(key, None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def logs() -> SimpleNamespace:
    """Helpers for test modules (importlib mode cannot import a conftest)."""
    return SimpleNamespace(json_lines=json_lines, child_env=child_env, repo=REPO, bin=BIN)


@pytest.fixture(scope="session")
def registered_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(model directory as the serving stack fetches it, its registry version)."""
    import mlflow

    from evaluation.reference_model import build_reference_model
    from registry.client import RegistryClient
    from registry.config import RegistryConfig
    from registry.versions import _PYFUNC_SOURCE, MODEL_DIR_ARTIFACT, fetch_model_dir, fluent_uris

    home = tmp_path_factory.mktemp("mlops")
    model = build_reference_model(tmp_path_factory.mktemp("reference") / "model")
    config = RegistryConfig.resolve(home, tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    with fluent_uris(config.tracking_uri):
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(_PYFUNC_SOURCE),
                artifacts={MODEL_DIR_ARTIFACT: str(model)},
                pip_requirements=["mlflow"],
            )
        version = str(mlflow.register_model(info.model_uri, config.model_name).version)
    fetched = fetch_model_dir(RegistryClient(config), version, home / "serving" / "models")
    return fetched, version


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import deltalake
    import pyarrow as pa

    from ingestion.records import normalise_text, record_id
    from ingestion.sample import generate_records

    texts = list(dict.fromkeys(normalise_text(r["text"]) for r in generate_records(600, seed=0)))
    path = tmp_path_factory.mktemp("lake") / "corpus"
    table = pa.table({"record_id": [record_id(t) for t in texts], "text": texts})
    deltalake.write_deltalake(str(path), table)
    return path


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = {
        "model": {
            "hidden_size": 32,
            "num_layers": 1,
            "num_heads": 1,
            "num_kv_heads": 1,
            "intermediate_size": 64,
            "vocab_size": 320,
            "max_position_embeddings": 64,
        },
        "data": {"seq_len": 32, "batch_size": 8, "tokenizer_sample": 500},
        "log_every": 2,
    }
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on loopback: decodes each ``ExportTraceServiceRequest``
    (protobuf, as the SDK's exporter sends it) into plain span dicts."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[dict] = []
        self.paths: list[str] = []
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    receiver.paths.append(self.path)
                    receiver.spans.extend(_decode(request))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.lock = lock

    def env(self) -> dict[str, str]:
        """What a process needs to export here, flushing every 200 ms."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}

    def wait_for(self, predicate, timeout_s: float = 30.0) -> list[dict]:
        """The spans received, once ``predicate(spans)`` holds; fails after ``timeout_s``."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                pytest.fail(f"spans never matched within {timeout_s}s; received: {spans}")
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _decode(request) -> list[dict]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "service": resource.get("service.name"),
                        "name": span.name,
                        "kind": span.kind,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "attributes": {
                            a.key: a.value.string_value or a.value.int_value
                            for a in span.attributes
                        },
                    }
                )
    return spans


@pytest.fixture
def otlp_receiver():
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()
