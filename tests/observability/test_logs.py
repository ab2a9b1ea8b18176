"""Contract: with ``MLOPS_LOG_FORMAT=json`` every log line the product's processes write is one
JSON object, and each carries the context it has: the engine's lines the model version and,
per request, the request id (the caller's ``x-request-id`` or a new one, echoed in the
response header); a torchrun training run's lines the Dagster run id and the rank;
``dagster job execute``'s JSON stream the run id. Text stays the default, in today's format.

The processes are the real ones: ``python -m serving.engine`` started by the launcher on a
model fetched from an MLflow registry, ``torchrun -m training``, the ``dagster`` CLI.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess

import httpx
import pytest

from observability import logs as obs
from serving.engine.launcher import EngineSpec, start_engine, wait_healthy
from serving.stack import free_port

HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def isolated_root_logger():
    """configure_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level, bound = root.handlers[:], root.level, obs.current_context()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    obs.bind(**{name: bound.get(name) for name in obs.CONTEXT_FIELDS})


def test_text_is_the_default_and_keeps_its_format(isolated_root_logger, monkeypatch):
    monkeypatch.delenv(obs.FORMAT_ENV, raising=False)
    out = io.StringIO()
    assert obs.configure_logging("engine", stream=out) == "text"
    logging.getLogger("serving.engine").info("ready")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO serving\.engine ready\n", out.getvalue()
    )


def test_unknown_format_logs_as_text_and_says_so(isolated_root_logger, monkeypatch):
    monkeypatch.setenv(obs.FORMAT_ENV, "xml")
    out = io.StringIO()
    assert obs.configure_logging("engine", stream=out) == "text"
    assert "MLOPS_LOG_FORMAT must be 'text' or 'json', got 'xml'; logging as text" in out.getvalue()
    with pytest.raises(ValueError, match="fmt must be 'text' or 'json', got 'yaml'"):
        obs.configure_logging("engine", fmt="yaml", stream=out)


def test_json_line_fields_context_and_exception(isolated_root_logger, monkeypatch):
    monkeypatch.setenv(obs.RUN_ID_ENV, "run-1")
    monkeypatch.setenv(obs.MODEL_VERSION_ENV, "4")
    out = io.StringIO()
    obs.configure_logging("engine", fmt="json", stream=out)
    log = logging.getLogger("serving.engine")
    token = obs.request_id_var.set("req-9")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed", extra={"status": 500})
    finally:
        obs.request_id_var.reset(token)
    log.info("after the request")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["ts"].endswith("Z") and first["level"] == "ERROR"
    assert first["logger"] == "serving.engine" and first["component"] == "engine"
    assert first["message"] == "failed" and first["status"] == 500
    assert (first["run_id"], first["model_version"], first["request_id"]) == ("run-1", "4", "req-9")
    assert "RuntimeError: boom" in first["exc_info"]
    assert "request_id" not in second and second["model_version"] == "4"


def test_engine_json_logs_carry_request_id_and_model_version(registered_model, logs, tmp_path):
    model_dir, version = registered_model
    spec = EngineSpec(model_dir, "sovereign-lm", port=free_port())
    log_path = tmp_path / "engine.log"
    process = start_engine(spec, log_path, env=logs.child_env(MLOPS_LOG_FORMAT="json"))
    try:
        wait_healthy(spec.url, 120, process)
        body = {"model": "sovereign-lm", "prompt": "Q: 1 2 A:", "max_tokens": 3}
        given = httpx.post(
            f"{spec.url}/v1/completions", json=body, headers={"x-request-id": "req-given-1"}
        )
        fresh = httpx.post(f"{spec.url}/v1/completions", json=body)
        garbage = httpx.post(
            f"{spec.url}/v1/completions", json=body, headers={"x-request-id": "two words"}
        )
        with httpx.stream(
            "POST", f"{spec.url}/v1/completions", json={**body, "stream": True}
        ) as streamed:
            chunks = [line for line in streamed.iter_lines() if line]
        missing = httpx.post(f"{spec.url}/v1/completions", json={**body, "model": "nope"})
    finally:
        process.terminate()
        process.wait(15)

    assert given.status_code == fresh.status_code == garbage.status_code == 200
    assert given.headers["x-request-id"] == "req-given-1"
    assert HEX_ID.fullmatch(fresh.headers["x-request-id"])
    assert HEX_ID.fullmatch(garbage.headers["x-request-id"])
    assert chunks[-1] == "data: [DONE]" and HEX_ID.fullmatch(streamed.headers["x-request-id"])
    assert missing.status_code == 404 and HEX_ID.fullmatch(missing.headers["x-request-id"])

    records = logs.json_lines(log_path.read_text())
    assert all(r["component"] == "engine" and r["model_version"] == version for r in records)
    access = {r["request_id"]: r for r in records if r["logger"] == "serving.engine.access"}
    expected = {
        "req-given-1": 200,
        fresh.headers["x-request-id"]: 200,
        garbage.headers["x-request-id"]: 200,
        streamed.headers["x-request-id"]: 200,
        missing.headers["x-request-id"]: 404,
    }
    assert {rid: r["status"] for rid, r in access.items()} == expected
    assert all(r["method"] == "POST" and r["path"] == "/v1/completions" for r in access.values())
    assert all(r["latency_ms"] > 0 for r in access.values())
    assert any(r["message"].startswith("serving ") for r in records), records


def test_torchrun_json_logs_carry_run_id_and_rank(corpus, tiny_config, logs, tmp_path):
    output = tmp_path / "run"
    command = [
        str(logs.bin / "torchrun"),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "training",
        "--data",
        str(corpus),
        "--output",
        str(output),
        "--max-steps",
        "6",
        "--checkpoint-every",
        "6",
        "--seed",
        "0",
        "--config",
        str(tiny_config),
    ]
    env = logs.child_env(
        MLOPS_LOG_FORMAT="json",
        DAGSTER_RUN_ID="run-7f3a",
        TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
    )
    done = subprocess.run(
        command, cwd=logs.repo, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    console = logs.json_lines(done.stdout) + logs.json_lines(done.stderr)
    assert any(re.match(r"step 6/6 loss", r["message"]) for r in console), console
    per_rank = {
        rank: logs.json_lines((output / "logs" / f"rank{rank}.log").read_text()) for rank in (0, 1)
    }
    for record in console + per_rank[0] + per_rank[1]:
        assert record["run_id"] == "run-7f3a" and record["component"] == "trainer", record
        assert isinstance(record["pid"], int) and record["restart"] == 0, record
    assert {r["rank"] for r in console} == {0}  # other ranks print only warnings
    assert all(r["rank"] == rank for rank in (0, 1) for r in per_rank[rank])
    assert per_rank[1], "rank 1 wrote no log lines"


def test_dagster_job_execute_writes_json_lines_with_the_run_id(logs, tmp_path):
    home = tmp_path / "mlops"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(logs.repo / "deploy" / "dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
    (home / "landing").mkdir()
    (home / "landing" / "a.jsonl").write_text('{"text": "one record"}\n{"text": ""}\n')
    env = logs.child_env(
        MLOPS_LOG_FORMAT="json", MLOPS_HOME=str(home), DAGSTER_HOME=str(dagster_home)
    )
    done = subprocess.run(
        [str(logs.bin / "dagster"), "job", "execute", "-m", "orchestration.definitions"]
        + ["-j", "ingest"],
        cwd=logs.repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    records = logs.json_lines(done.stdout)
    run_ids = {r.get("run_id") for r in records}
    assert len(run_ids) == 1 and None not in run_ids, run_ids
    (run_id,) = run_ids
    assert run_id in done.stderr  # the same run Dagster's console logger reports
    events = {(r.get("step"), r.get("event")) for r in records}
    assert {(None, "PIPELINE_START"), (None, "PIPELINE_SUCCESS")} <= events
    assert ("ingest_landing_files", "STEP_SUCCESS") in events
    # The asset's own context.log line, with the step that wrote it.
    assert any(
        r.get("step") == "ingest_landing_files"
        and "1 accepted" in r["message"]
        and "event" not in r
        for r in records
    ), records
