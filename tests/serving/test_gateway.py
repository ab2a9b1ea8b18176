"""Contract: the gateway routes ``sovereign-lm`` by weight, hides canary failures, breaks
circuits, guards its admin API, rejects bad input in the OpenAI shape and keeps its state
across restarts.

The gateway runs as ``python -m serving.gateway``; upstreams are small scripted servers on
loopback (one that answers, one that fails with 500s or hangs on demand) and, for the client
test, a real engine process.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

pytestmark = pytest.mark.slow
ROUTE = "sovereign-lm"


def scripted_backend(name: str) -> tuple[Starlette, dict]:
    """An upstream whose answers carry its name; ``control`` makes it fail or hang."""
    control = {"fail": False, "delay": 0.0, "hits": 0}

    async def completions(request: Request) -> Response:
        control["hits"] += 1
        body = await request.json()
        if control["delay"]:
            await asyncio.sleep(control["delay"])
        if control["fail"]:
            return JSONResponse(
                {
                    "error": {
                        "message": "boom",
                        "type": "internal_error",
                        "param": None,
                        "code": None,
                    }
                },
                status_code=500,
            )
        if body.get("stream"):

            async def events():
                for part in (name, "!"):
                    chunk = {
                        "id": "x",
                        "object": "text_completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "text": part, "finish_reason": None}],
                    }
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "x",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "text": name, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    app = Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/health", lambda r: Response(status_code=200)),
        ]
    )
    return app, control


@pytest.fixture
def upstreams(helpers):
    stable_app, stable = scripted_backend("stable")
    canary_app, canary = scripted_backend("canary")
    with helpers.ThreadServer(stable_app) as s, helpers.ThreadServer(canary_app) as c:
        yield {"stable": (s.url, stable), "canary": (c.url, canary)}


@pytest.fixture
def gateway_factory(spawn, tmp_path, helpers):
    state = tmp_path / "gateway-state.json"

    def start(port: int | None = None, token: str | None = helpers.admin_token):
        env = {"MLOPS_GATEWAY_ADMIN_TOKEN": token or ""}
        return spawn(
            "gateway", "--state", str(state), "--breaker-cooldown-s", "1.0", port=port, env=env
        )

    start.state = state
    return start


@pytest.fixture
def gateway(gateway_factory):
    return gateway_factory()


def admin_client(gateway, helpers):
    from serving.gateway.client import GatewayAdmin

    return GatewayAdmin(gateway.url, helpers.admin_token)


def complete(gateway, stream=False) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/completions",
        timeout=10,
        json={"model": ROUTE, "prompt": "Q: x", "stream": stream},
    )


def setup_route(admin, upstreams, weight: float, canary_timeout: float = 5.0):
    admin.put_backend("stable", upstreams["stable"][0])
    admin.put_backend("canary", upstreams["canary"][0], timeout_s=canary_timeout)
    admin.put_route(ROUTE, "stable", "canary", weight)


def test_openai_client_through_gateway_to_a_real_engine(
    spawn, gateway, helpers, good_model_dir, probe_tasks
):
    engine = spawn("engine", "--model", str(good_model_dir), "--served-model-name", "tiny-v1")
    admin = admin_client(gateway, helpers)
    admin.put_backend("v1", engine.url, model="tiny-v1")
    admin.put_route(ROUTE, "v1")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [ROUTE]
    prompt, answer = probe_tasks[0]
    result = client.completions.create(model=ROUTE, prompt=prompt, max_tokens=10, temperature=0)
    assert result.choices[0].text.strip() == answer
    chat = client.chat.completions.create(
        model=ROUTE,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=10,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in chat if c.choices).strip() == answer


def test_admin_api_needs_the_token(gateway, gateway_factory, helpers):
    assert httpx.get(f"{gateway.url}/admin/state", timeout=5).status_code == 401
    wrong = httpx.put(
        f"{gateway.url}/admin/backends/x",
        json={"url": "http://127.0.0.1:1"},
        headers={"Authorization": "Bearer wrong"},
        timeout=5,
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert admin_client(gateway, helpers).state()["backends"] == {}
    open_gateway = gateway_factory(token=None)
    refused = httpx.get(
        f"{open_gateway.url}/admin/state", timeout=5, headers={"Authorization": "Bearer anything"}
    )
    assert refused.status_code == 401


def test_malformed_requests_get_400_in_the_openai_shape(gateway, helpers, upstreams):
    setup_route(admin_client(gateway, helpers), upstreams, 0)
    url = f"{gateway.url}/v1/completions"
    cases = [b"{not json", b"[1, 2]", b'{"prompt": "no model"}', b'{"model": 3}', b"\xff\xfe"]
    for body in cases:
        r = httpx.post(url, content=body, timeout=5, headers={"content-type": "application/json"})
        assert r.status_code == 400, body
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    huge = httpx.post(url, content=b'{"model": "' + b"x" * (2 << 20) + b'"}', timeout=10)
    assert huge.status_code == 413
    unknown = httpx.post(url, json={"model": "nope", "prompt": "x"}, timeout=5)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    bad_admin = httpx.put(
        f"{gateway.url}/admin/routes/{ROUTE}",
        json={"stable": "missing"},
        headers={"Authorization": f"Bearer {helpers.admin_token}"},
        timeout=5,
    )
    assert bad_admin.status_code == 400 and bad_admin.json()["error"]["param"] == "stable"
    assert complete(gateway).status_code == 200  # still serving after all of that


def test_weighted_split(gateway, helpers, upstreams):
    admin = admin_client(gateway, helpers)
    setup_route(admin, upstreams, 0)
    assert {complete(gateway).json()["choices"][0]["text"] for _ in range(20)} == {"stable"}
    admin.set_weight(ROUTE, 50)
    seen = [complete(gateway).json()["choices"][0]["text"] for _ in range(100)]
    assert 25 <= seen.count("canary") <= 75
    admin.set_weight(ROUTE, 100)
    assert {complete(gateway).json()["choices"][0]["text"] for _ in range(20)} == {"canary"}


def test_canary_failures_are_retried_on_stable_and_open_the_breaker(gateway, helpers, upstreams):
    admin = admin_client(gateway, helpers)
    setup_route(admin, upstreams, 100)
    upstreams["canary"][1]["fail"] = True
    texts = [complete(gateway).json()["choices"][0]["text"] for _ in range(10)]
    assert texts == ["stable"] * 10
    assert upstreams["canary"][1]["hits"] == 3  # breaker opened after 3 consecutive failures
    assert admin.state()["breakers"]["canary"] == "open"
    stats = admin.backend_stats(ROUTE)
    assert stats["canary"].errors == 3 and stats["stable"].errors == 0
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert (
        'gateway_retries_total{from_backend="canary",route="sovereign-lm",to_backend="stable"} 3.0'
        in metrics
    )
    assert 'gateway_breaker_state{backend="canary"} 2.0' in metrics
    # streaming: nothing was sent yet when the canary failed, so stable serves the stream
    upstreams["canary"][1]["fail"] = False
    time.sleep(1.1)  # cooldown: the next canary request is a half-open probe, which succeeds
    assert complete(gateway).json()["choices"][0]["text"] == "canary"
    assert admin.state()["breakers"]["canary"] == "closed"
    upstreams["canary"][1]["fail"] = True
    r = complete(gateway, stream=True)
    assert r.status_code == 200 and '"text": "stable"' in r.text and "[DONE]" in r.text


def test_canary_timeout_is_retried_on_stable(gateway, helpers, upstreams):
    setup_route(admin_client(gateway, helpers), upstreams, 100, canary_timeout=0.3)
    upstreams["canary"][1]["delay"] = 2.0
    started = time.monotonic()
    assert complete(gateway).json()["choices"][0]["text"] == "stable"
    assert time.monotonic() - started < 1.5


def test_state_survives_a_gateway_restart(gateway_factory, helpers, upstreams):
    first = gateway_factory()
    setup_route(admin_client(first, helpers), upstreams, 25)
    before = admin_client(first, helpers).state()
    first.kill()  # SIGKILL: no chance to flush anything on the way out
    second = gateway_factory()
    after = admin_client(second, helpers).state()
    assert (
        after["routes"]
        == before["routes"]
        == {ROUTE: {"stable": "stable", "canary": "canary", "canary_weight": 25.0}}
    )
    assert after["backends"] == before["backends"]
    assert complete(second).status_code == 200
    assert json.loads(gateway_factory.state.read_text())["routes"][ROUTE]["canary_weight"] == 25
