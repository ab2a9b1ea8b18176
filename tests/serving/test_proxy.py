"""Contract: the gateway's hot path (``Proxy``) serves the proxied OpenAI routes.

The unmodified ``openai`` client gets completions and streams through it; a canary that
answers 5xx, hangs or refuses is retried on stable and counted against the canary; when
no backend can answer the client gets the last 5xx or a 503 in the OpenAI error shape; bad
input gets 400 / 404 / 413. The proxy and its backends are uvicorn servers on loopback.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from prometheus_client import generate_latest

from serving.gateway.metrics import GatewayMetrics
from serving.gateway.proxy import Proxy
from serving.gateway.routing import RoutingTable
from serving.gateway.upstream import UpstreamPool

ROUTE = "sovereign-lm"


def backend_app(name: str, control: dict):
    """Answers completions with its own name (streamed when asked); ``control["mode"]``
    makes it fail with 500 or hang."""

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        payload = json.loads(body)
        control["models"].append(payload["model"])
        control["request_ids"].append(dict(scope["headers"]).get(b"x-request-id"))
        if control["mode"] == "hang":
            await asyncio.sleep(3)
        if control["mode"] == "slow":
            await _slow_stream(receive, send, control)
        elif control["mode"] == "fail":
            await _send(send, 500, b'{"error": {"message": "boom", "type": "internal_error"}}')
        elif payload.get("stream"):
            await _stream(send, name, payload["model"])
        else:
            await _send(send, 200, json.dumps(_completion(name, payload["model"])).encode())

    return app


def _completion(text: str, model: str, final: bool = True) -> dict:
    choice = {"index": 0, "text": text, "finish_reason": "stop" if final else None}
    return {"id": "c1", "object": "text_completion", "created": 0, "model": model,
            "choices": [choice]}  # fmt: skip


async def _send(send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _stream(send, name: str, model: str) -> None:
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i, piece in enumerate((name[:3], name[3:])):
        event = _completion(piece, model, final=i == 1)
        chunk = b"data: " + json.dumps(event).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _slow_stream(receive, send, control: dict) -> None:
    """Up to 100 events 50 ms apart; records how many went out and whether the client left."""

    async def watch() -> None:
        if (await receive())["type"] == "http.disconnect":
            control["disconnected"] = True

    watcher = asyncio.ensure_future(watch())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    while control["sent"] < 100 and not control["disconnected"]:
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        control["sent"] += 1
        await asyncio.sleep(0.05)
    await send({"type": "http.response.body", "body": b""})
    watcher.cancel()


@pytest.fixture
def stack(helpers):
    """Stable and canary backends, and a Proxy routing ROUTE to them."""
    controls = {
        name: {"mode": "ok", "models": [], "request_ids": [], "sent": 0, "disconnected": False}
        for name in ("stable", "canary")
    }
    servers = [helpers.ThreadServer(backend_app(n, c)) for n, c in controls.items()]
    for server in servers:
        server.__enter__()
    table = RoutingTable(breaker_threshold=100)
    table.put_backend("stable", servers[0].url, timeout_s=5.0)
    table.put_backend("canary", servers[1].url, timeout_s=0.5)
    table.put_route(ROUTE, "stable", "canary", 100.0)
    metrics = GatewayMetrics(table)
    proxy = helpers.ThreadServer(Proxy(table, metrics, UpstreamPool(), 2048))
    proxy.__enter__()
    try:
        yield proxy.url, table, metrics, controls
    finally:
        for server in (proxy, *servers):
            server.__exit__()


def metric(metrics: GatewayMetrics, line_start: str) -> float:
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_openai_client_completion_and_stream(stack):
    url, table, _, _ = stack
    table.put_route(ROUTE, "stable")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    done = client.completions.create(model=ROUTE, prompt="Q: 1+1 A:", max_tokens=4)
    assert done.choices[0].text == "stable"
    events = client.completions.create(model=ROUTE, prompt="x", max_tokens=4, stream=True)
    assert "".join(e.choices[0].text for e in events) == "stable"


def test_request_id_is_forwarded_and_echoed(stack):
    url, table, _, controls = stack
    table.put_route(ROUTE, "stable")
    body = {"model": ROUTE, "prompt": "x", "max_tokens": 2}
    given = httpx.post(f"{url}/v1/completions", json=body, headers={"x-request-id": "req-42"})
    made = httpx.post(f"{url}/v1/completions", json=body)
    assert given.status_code == made.status_code == 200
    assert given.headers["x-request-id"] == "req-42"
    generated = made.headers["x-request-id"]
    assert generated and generated != "req-42"
    assert controls["stable"]["request_ids"] == [b"req-42", generated.encode()]
    refused = httpx.post(f"{url}/v1/completions", json={**body, "model": "nope"})
    assert refused.status_code == 404 and refused.headers["x-request-id"]


@pytest.mark.parametrize("mode, kind", [("fail", "status_5xx"), ("hang", "timeout")])
def test_failing_canary_is_retried_on_stable(stack, mode, kind):
    url, _, metrics, controls = stack
    controls["canary"]["mode"] = mode
    for stream in (False, True):
        body = {"model": ROUTE, "prompt": "x", "stream": stream}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=10)
        assert r.status_code == 200
        assert '"text": "sta"' in r.text if stream else r.json()["choices"][0]["text"] == "stable"
    labels = f'route="{ROUTE}"'
    assert (
        metric(metrics, f'gateway_backend_errors_total{{backend="canary",kind="{kind}",{labels}')
        == 2
    )
    assert metric(metrics, "gateway_retries_total{") == 2
    assert metric(metrics, f'gateway_responses_total{{code="200",{labels}') == 2


def test_refused_canary_counts_as_connect_error(stack, helpers):
    url, table, metrics, _ = stack
    table.put_backend("canary", f"http://127.0.0.1:{helpers.free_port()}", timeout_s=1.0)
    r = httpx.post(f"{url}/v1/completions", json={"model": ROUTE, "prompt": "x"}, timeout=10)
    assert r.json()["choices"][0]["text"] == "stable"
    assert metric(metrics, 'gateway_backend_errors_total{backend="canary",kind="connect"') == 1


def test_every_backend_failing_returns_last_5xx_then_503(stack, helpers):
    url, table, _, controls = stack
    controls["canary"]["mode"] = controls["stable"]["mode"] = "fail"
    r = httpx.post(f"{url}/v1/completions", json={"model": ROUTE, "prompt": "x"}, timeout=10)
    assert r.status_code == 500 and r.json()["error"]["message"] == "boom"
    table.put_backend("stable", f"http://127.0.0.1:{helpers.free_port()}")
    table.put_backend("canary", f"http://127.0.0.1:{helpers.free_port()}")
    r = httpx.post(f"{url}/v1/completions", json={"model": ROUTE, "prompt": "x"}, timeout=10)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "backend_unavailable"


def test_backend_model_name_is_rewritten(stack):
    url, table, _, controls = stack
    table.put_backend("stable", table.backends["stable"].url, model="engine-name")
    table.put_route(ROUTE, "stable")
    r = httpx.post(f"{url}/v1/completions", json={"model": ROUTE, "prompt": "x"}, timeout=10)
    assert r.status_code == 200
    assert controls["stable"]["models"] == ["engine-name"]


@pytest.mark.parametrize(
    "content, status, needle",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"prompt": "x"}', 400, "`model` is required"),
        (b'{"model": "nope"}', 404, "`nope` does not exist"),
        (b'{"model": "sovereign-lm", "prompt": "' + b"x" * 4096 + b'"}', 413, "2048-byte"),
    ],
)
def test_bad_input_gets_an_openai_error(stack, content, status, needle):
    url, *_ = stack
    r = httpx.post(f"{url}/v1/completions", content=content, timeout=10)
    assert r.status_code == status
    assert needle in r.json()["error"]["message"]


def test_client_leaving_a_stream_stops_the_upstream(stack):
    url, table, _, controls = stack
    table.put_route(ROUTE, "stable")
    controls["stable"]["mode"] = "slow"
    body = {"model": ROUTE, "prompt": "x", "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=10) as r:
        assert next(r.iter_lines()) == "data: {}"
    deadline = time.monotonic() + 5
    while not controls["stable"]["disconnected"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert controls["stable"]["disconnected"]
    assert controls["stable"]["sent"] < 100
