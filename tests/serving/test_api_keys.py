"""Contract: client API keys. Off by default; with ``--require-api-keys`` every OpenAI call
needs a key made through the admin API (401 otherwise, in the OpenAI shape); the gateway
state keeps only the key's SHA-256, and keys survive a restart; per-key requests/min and
tokens/min limits are answered 429 with ``Retry-After`` without touching the backend, and
other keys are unaffected; usage shows per key in ``/metrics`` and ``/admin/keys``.

A real gateway process and a scripted upstream that reports 10 tokens of usage per answer;
the unmodified ``openai`` client.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.gateway.client import GatewayAdmin
from serving.gateway.keys import KeyTable

pytestmark = pytest.mark.slow
ROUTE = "sovereign-lm"


def upstream_app(hits: list[int]) -> Starlette:
    async def completions(request) -> Response:
        hits.append(1)
        return JSONResponse(
            {
                "id": "x",
                "object": "text_completion",
                "created": 0,
                "model": ROUTE,
                "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10},
            }
        )

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])


@pytest.fixture
def keyed(spawn, tmp_path, helpers):
    hits: list[int] = []
    with helpers.ThreadServer(upstream_app(hits)) as upstream:
        args = ("--state", str(tmp_path / "state.json"), "--require-api-keys")
        env = {"MLOPS_GATEWAY_ADMIN_TOKEN": helpers.admin_token}
        gateway = spawn("gateway", *args, env=env)
        admin = GatewayAdmin(gateway.url, helpers.admin_token)
        admin.put_backend("up", upstream.url)
        admin.put_route(ROUTE, "up")
        yield gateway, admin, hits, tmp_path / "state.json"


def client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=10)


def ask(gateway, key: str):
    return client(gateway, key).completions.create(model=ROUTE, prompt="hi", max_tokens=4)


def test_keys_are_required_hashed_and_survive_a_restart(keyed):
    gateway, admin, hits, state = keyed
    with pytest.raises(openai.AuthenticationError):
        ask(gateway, "sk-not-a-key")
    bare = httpx.post(f"{gateway.url}/v1/completions", json={"model": ROUTE, "prompt": "x"})
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{gateway.url}/v1/models").status_code == 401
    assert hits == []  # nothing unauthenticated reached the backend
    key = admin.create_key("team-a")
    assert ask(gateway, key).choices[0].text == "ok"
    assert key not in state.read_text() and "sha256" in state.read_text()
    gateway.kill()
    gateway.start()
    assert ask(gateway, key).choices[0].text == "ok"
    admin.remove_key("team-a")
    with pytest.raises(openai.AuthenticationError):
        ask(gateway, key)


def test_per_key_limits_answer_429_and_spare_other_keys(keyed):
    gateway, admin, hits, _ = keyed
    slow = admin.create_key("slow", rpm=3)
    thrifty = admin.create_key("thrifty", tpm=25)
    free = admin.create_key("free")
    for _ in range(3):
        ask(gateway, slow)
    with pytest.raises(openai.RateLimitError) as over:
        ask(gateway, slow)
    assert int(over.value.response.headers["retry-after"]) >= 1
    assert "3 requests per minute" in str(over.value)
    for _ in range(3):  # 0, 10, 20 tokens used before each: under 25, admitted
        ask(gateway, thrifty)
    with pytest.raises(openai.RateLimitError, match="25 tokens per minute"):
        ask(gateway, thrifty)  # 30 used
    assert ask(gateway, free).choices[0].text == "ok"
    assert len(hits) == 7  # refused requests never reached the backend
    usage = admin.keys()["keys"]
    assert usage["slow"]["last_minute"] == {"requests": 3, "tokens": 30}
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert 'gateway_key_requests_total{key="slow"} 3.0' in metrics
    assert 'gateway_key_tokens_total{key="thrifty"} 30.0' in metrics
    assert 'gateway_key_rejected_total{key="slow",reason="quota"} 1.0' in metrics
    for secret in (slow, thrifty, free):
        assert secret not in metrics


def test_window_slides_with_the_clock():
    now = [1000.0]
    table = KeyTable(required=True, clock=lambda: now[0])
    key = table.create("k", rpm=1)
    table.authenticate(f"Bearer {key}".encode())
    with pytest.raises(Exception, match="1 requests per minute"):
        table.authenticate(f"Bearer {key}".encode())
    now[0] += 60.5
    assert table.authenticate(f"Bearer {key}".encode()).name == "k"


def test_keys_are_on_in_the_kubernetes_manifests_and_off_by_default():
    from pathlib import Path

    import yaml

    from serving.gateway.app import GatewayConfig

    assert GatewayConfig(state_path=Path("unused"), admin_token=None).require_api_keys is False
    manifest = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "gateway.yaml"
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLOPS_GATEWAY_REQUIRE_API_KEYS"] == "1"
