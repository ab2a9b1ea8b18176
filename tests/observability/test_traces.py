"""Traces join across processes and reach an OTLP/HTTP receiver.

Contract: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, a request through the serving stack
(``python -m serving up``: supervisor, gateway, embedded engine, each its own process) is one
trace: the gateway's server span, its client span to the engine, and the engine's server span
with ``queue wait`` and ``generation`` under it, linked parent to child; a caller's
``traceparent`` is continued. torchrun ranks continue the ``TRACEPARENT`` their launcher hands
down, and their JSON log lines carry that trace id. Without the variable nothing is traced.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import openai
import pytest

from observability import tracing
from observability.tracing_http import NULL_TRACING, http, trace_asgi

pytestmark = pytest.mark.slow

SERVER, CLIENT = 2, 3  # OTLP span kinds
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serving(home, env, *args: str, timeout_s: float = 240.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving", "--home", str(home), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_without_an_endpoint_tracing_is_a_do_nothing_stand_in(monkeypatch):
    for name in tracing.ENDPOINT_ENVS:
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure_tracing("gateway") is False
    assert http("serving.gateway") is NULL_TRACING

    def app(scope, receive, send):
        raise AssertionError("not called")

    assert trace_asgi(app, "serving.gateway") is app
    headers: dict[str, str] = {}
    with NULL_TRACING.client("engine", headers):
        pass
    assert headers == {}  # nothing propagated when nothing is traced


def test_run_trace_id_is_the_dagster_run_id():
    run_id = "b72d6410-55e0-4e5f-ba3a-dc7ed458b3eb"
    assert format(tracing.run_trace_id(run_id), "032x") == run_id.replace("-", "")


def test_one_request_is_one_trace_across_gateway_and_engine(
    registered_model, logs, otlp_receiver, tmp_path
):
    model_dir, _ = registered_model
    home = tmp_path / "home"
    env = logs.child_env(
        MLOPS_HOME=str(home),
        MLOPS_GATEWAY_ADMIN_TOKEN="trace-test-token",
        MLOPS_LOG_FORMAT="json",
        PYTHONPATH=str(logs.repo),
        **otlp_receiver.env(),
    )
    up = _serving(home, env, "up", "--model", str(model_dir), "--gateway-port", str(_free_port()))
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        gateway = json.loads(up.stdout)["gateway"]["url"]
        client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model="sovereign-lm", messages=[{"role": "user", "content": "1 2"}], max_tokens=3
        )
        assert answer.choices[0].message.content is not None
        caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        client.completions.create(
            model="sovereign-lm",
            prompt="Q: 1 2 A:",
            max_tokens=2,
            extra_headers={"traceparent": caller},
        )

        def complete(spans: list[dict]) -> bool:
            # each process exports on its own schedule: wait for both requests' spans from
            # the engine (generations) and from the gateway (a client span per hop)
            engine_spans = [s for s in spans if s["service"] == "engine"]
            hops = [s for s in spans if s["service"] == "gateway" and s["kind"] == CLIENT]
            return sum(s["name"] == "generation" for s in engine_spans) >= 2 and len(hops) >= 2

        spans = otlp_receiver.wait_for(complete)
    finally:
        down = _serving(home, env, "down", timeout_s=60)
        assert down.returncode == 0, down.stderr

    chat = [
        s for s in spans if s["service"] == "gateway" and s["name"] == "POST /v1/chat/completions"
    ]
    assert len(chat) == 1 and chat[0]["kind"] == SERVER and chat[0]["parent_span_id"] == ""
    trace = [s for s in spans if s["trace_id"] == chat[0]["trace_id"]]
    by_id = {s["span_id"]: s for s in trace}
    hop = [s for s in trace if s["service"] == "gateway" and s["kind"] == CLIENT]
    assert len(hop) == 1 and hop[0]["parent_span_id"] == chat[0]["span_id"]
    served = [s for s in trace if s["service"] == "engine" and s["kind"] == SERVER]
    assert len(served) == 1, trace
    assert served[0]["name"] == "POST /v1/chat/completions"
    assert served[0]["parent_span_id"] == hop[0]["span_id"]  # the engine joined the gateway's
    assert served[0]["attributes"]["http.response.status_code"] == 200
    phases = {s["name"]: s for s in trace if s["parent_span_id"] == served[0]["span_id"]}
    assert set(phases) == {"queue wait", "generation"}, trace
    assert phases["queue wait"]["end_ns"] <= phases["generation"]["start_ns"]
    assert all(s["parent_span_id"] in by_id or s is chat[0] for s in trace)

    continued = [s for s in spans if s["trace_id"] == CALLER_TRACE]
    roots = [s for s in continued if s["parent_span_id"] == CALLER_SPAN]
    assert [s["service"] for s in roots] == ["gateway"], continued
    assert {s["service"] for s in continued} == {"gateway", "engine"}

    engine_log = (home / "serving" / "logs").glob("*.log")
    records = [
        json.loads(line)
        for path in engine_log
        for line in path.read_text().splitlines()
        if line.startswith("{")
    ]
    access = [r for r in records if r.get("logger") == "serving.engine.access"]
    engine_span = {
        s["trace_id"]: s["span_id"]
        for s in spans
        if s["service"] == "engine" and s["kind"] == SERVER
    }
    ours = {chat[0]["trace_id"], CALLER_TRACE}
    logged = {r["trace_id"]: r["span_id"] for r in access if r.get("trace_id") in ours}
    assert logged == {trace_id: engine_span[trace_id] for trace_id in ours}, access


def test_gateway_workers_continue_the_callers_trace(
    registered_model, logs, otlp_receiver, tmp_path
):
    model_dir, _ = registered_model
    home = tmp_path / "home"
    env = logs.child_env(
        MLOPS_HOME=str(home),
        MLOPS_GATEWAY_ADMIN_TOKEN="trace-test-token",
        PYTHONPATH=str(logs.repo),
        **otlp_receiver.env(),
    )
    port = str(_free_port())
    up = _serving(home, env, "up", "--model", str(model_dir), "--gateway-port", port,
                  "--gateway-workers", "2")  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        gateway = json.loads(up.stdout)["gateway"]["url"]
        client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
        caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        client.completions.create(
            model="sovereign-lm", prompt="Q: 1 2 A:", max_tokens=2,
            extra_headers={"traceparent": caller},
        )  # fmt: skip

        def joined(spans: list[dict]) -> bool:
            ours = [s for s in spans if s["trace_id"] == CALLER_TRACE]
            return {s["service"] for s in ours} == {"gateway", "engine"}

        spans = otlp_receiver.wait_for(joined)
    finally:
        down = _serving(home, env, "down", timeout_s=60)
        assert down.returncode == 0, down.stderr
    ours = [s for s in spans if s["trace_id"] == CALLER_TRACE]
    server = [s for s in ours if s["service"] == "gateway" and s["kind"] == SERVER]
    assert len(server) == 1 and server[0]["parent_span_id"] == CALLER_SPAN, ours
    assert server[0]["name"] == "POST /v1/completions"


def test_trainer_ranks_join_the_trace_handed_down(
    corpus, tiny_config, logs, otlp_receiver, tmp_path
):
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
        "4",
        "--checkpoint-every",
        "4",
        "--seed",
        "0",
        "--config",
        str(tiny_config),
    ]
    env = logs.child_env(
        MLOPS_LOG_FORMAT="json",
        TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
        TRACEPARENT=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
        PYTHONPATH=os.environ.get("PYTHONPATH", str(logs.repo)),
        **otlp_receiver.env(),
    )
    done = subprocess.run(
        command, cwd=logs.repo, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    spans = otlp_receiver.wait_for(lambda s: len([x for x in s if x["service"] == "trainer"]) >= 2)
    ranks = {s["name"]: s for s in spans if s["service"] == "trainer"}
    assert set(ranks) == {"rank 0", "rank 1"}, spans
    for span in ranks.values():
        assert span["trace_id"] == CALLER_TRACE and span["parent_span_id"] == CALLER_SPAN
    assert otlp_receiver.paths and set(otlp_receiver.paths) == {"/v1/traces"}

    per_rank = {
        rank: logs.json_lines((output / "logs" / f"rank{rank}.log").read_text()) for rank in (0, 1)
    }
    for rank, records in per_rank.items():
        assert records, f"rank {rank} wrote no log lines"
        assert {r["trace_id"] for r in records} == {CALLER_TRACE}, records
        assert {r["span_id"] for r in records} == {ranks[f"rank {rank}"]["span_id"]}
