"""Contract: a failed run is recorded under $MLOPS_HOME/alerts and posted to the configured
webhook; an unreachable webhook is retried a bounded number of times, then reported, and
the failure is still recorded.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import pytest

from orchestration.definitions import defs
from orchestration.defs.ops import AlertsResource
from orchestration.resources import MlopsHome


class _Recorder(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook():
    _Recorder.received = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Recorder.received
    server.shutdown()


def _fail_a_run(instance: dg.DagsterInstance, home: Path) -> dg.ExecuteInProcessResult:
    # With nothing ingested yet the split step fails for real: the corpus does not exist.
    job = defs.resolve_job_def("ingest")
    return job.execute_in_process(
        instance=instance,
        resources={"mlops": MlopsHome(home=str(home))},
        raise_on_error=False,
        op_selection=None,
    )


def _evaluate(instance, result, home: Path, webhook_url: str | None) -> None:
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    sensor = defs.resolve_sensor_def("run_failure_alerts")
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={
            "mlops": MlopsHome(home=str(home)),
            "alerts": AlertsResource(webhook_url=webhook_url),
        },
    ).for_run_failure()
    sensor(context)


def test_failed_run_is_recorded_and_posted(tmp_path: Path, webhook) -> None:
    url, received = webhook
    with dg.instance_for_test() as instance:
        result = _fail_a_run(instance, tmp_path)
        assert not result.success
        _evaluate(instance, result, tmp_path, url)
    assert len(received) == 1
    assert received[0]["run_id"] == result.run_id
    assert received[0]["job_name"] == "ingest"
    assert received[0]["failed_steps"] == ["corpus_split"]
    lines = (tmp_path / "alerts" / "failures.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["run_id"] == result.run_id
    assert json.loads(lines[0])["delivery_errors"] == []


def test_unreachable_webhook_is_reported_not_raised(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        result = _fail_a_run(instance, tmp_path)
        _evaluate(instance, result, tmp_path, "http://127.0.0.1:9/nothing-listens-here")
    record = json.loads((tmp_path / "alerts" / "failures.jsonl").read_text().splitlines()[0])
    assert record["run_id"] == result.run_id
    assert "after 3 attempts" in record["delivery_errors"][0]
