"""Contract: ``python -m serving.gateway --workers 2`` runs two full gateway processes on one
port sharing the state file: both register a private URL, an admin change made through the
shared port is in force on both within 1 s, and a SIGKILLed worker is restarted while the
other keeps serving on the port. ``python -m serving up --gateway-workers 2`` starts such a
gateway in front of the engine.

Real processes: the gateway with its worker parent, a fake OpenAI upstream
(``python -m testing.partners.fake --kind openai``), and the supervised stack.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from serving.gateway.client import GatewayAdmin

pytestmark = pytest.mark.slow
ROUTE = "sovereign-lm"


def _state(url: str, token: str) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{url}/admin/state", headers=headers, timeout=5).json()


def _children(pid: int) -> list[int]:
    return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def _replicas(admin: GatewayAdmin, count: int, limit_s: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + limit_s
    while len(found := admin.replicas()) != count:
        assert time.monotonic() < deadline, f"{len(found)} worker(s) registered, want {count}"
        time.sleep(0.2)
    return found


def test_two_workers_share_the_port_and_converge(spawn, helpers, tmp_path):
    upstream_port = helpers.free_port()
    upstream = helpers.Proc(
        [
            "-m",
            "testing.partners.fake",
            "--kind",
            "openai",
            "--name",
            "up",
            "--port",
            str(upstream_port),
        ],  # fmt: skip
        f"http://127.0.0.1:{upstream_port}",
        tmp_path / "upstream.log",
        helpers.child_env(),
    ).start(60)
    try:
        gateway = spawn(
            "gateway",
            "--workers",
            "2",
            "--state",
            str(tmp_path / "state.json"),
            env={"MLOPS_GATEWAY_ADMIN_TOKEN": helpers.admin_token},
        )
        admin = GatewayAdmin(gateway.url, helpers.admin_token)
        workers = _replicas(admin, 2)
        assert all(w["url"] != gateway.url for w in workers)  # private ports, not the shared one

        admin.put_backend("up", upstream.url)
        for weight in (0.0, 30.0):
            admin.put_route(ROUTE, "up", "up" if weight else None, weight)
            start = time.monotonic()
            for w in workers:
                while (
                    _state(w["url"], helpers.admin_token)["routes"]
                    .get(ROUTE, {})
                    .get("canary_weight")
                    != weight
                ):
                    assert time.monotonic() - start < 1.0, f"{w['url']} behind after 1 s"
                    time.sleep(0.01)

        children = _children(gateway.proc.pid)
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        for _ in range(20):  # the surviving worker keeps the port served
            body = {"model": ROUTE, "prompt": "hi", "max_tokens": 2}
            r = httpx.post(f"{gateway.url}/v1/completions", json=body, timeout=10)
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 60
        while len(_children(gateway.proc.pid)) != 2:
            assert time.monotonic() < deadline, "killed worker not restarted"
            time.sleep(0.2)
        before = {w["url"] for w in workers}
        deadline = time.monotonic() + 60
        while not ((now := {w["url"] for w in admin.replicas()}) - before and len(now) == 2):
            assert time.monotonic() < deadline, "restarted worker never registered"
            time.sleep(0.5)  # the dead worker ages out of the registry, the new one joins
    finally:
        upstream.stop()


def test_serving_up_runs_the_gateway_with_workers(helpers, random_model_dir, tmp_path):
    import json

    home = tmp_path / "home"
    done = helpers.serving_cli(
        home, "up", "--model", str(random_model_dir), "--gateway-workers", "2"
    )
    try:
        assert done.returncode == 0, done.stderr
        url = json.loads(done.stdout)["gateway"]["url"]
        admin = GatewayAdmin(url, helpers.admin_token)
        assert len(_replicas(admin, 2)) == 2
        for w in admin.replicas():  # each worker serves the route registered through one
            assert ROUTE in _state(w["url"], helpers.admin_token)["routes"]
        body = {"model": ROUTE, "prompt": "hi", "max_tokens": 2}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
    finally:
        helpers.serving_cli(home, "down", timeout_s=60)
