"""Contract: three gateway replicas sharing one PostgreSQL state behind HAProxy act as one
gateway. An admin change made through any replica is in force on all three within 1 s; a
replica SIGKILLed, a rolling restart of all three, and a PostgreSQL restart cost no client
request (the unmodified ``openai`` client, with its own retries turned off, so every failure
the fleet lets through is counted); with PostgreSQL down the replicas keep serving, say
"stale" on ``/health`` and ``/metrics`` and refuse admin writes with a 503 naming the store,
then resynchronise; a canary killed under load is rolled back by the fleet-aware health check
and the rollback reaches every replica.

Real processes throughout: a private PostgreSQL server (restarted by the test, never the
machine's shared one), ``python -m serving.gateway`` replicas, Debian's haproxy, and
OpenAI-speaking upstreams (``python -m testing.partners.fake --kind openai``).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.canary import CanaryConfig, check_canary_health, rollback
from serving.gateway.client import GatewayAdmin

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
ROUTE = "sovereign-lm"
PROPAGATION_LIMIT_S = 1.0
RESYNC_LIMIT_S = 5.0


class Fleet:
    def __init__(self, helpers, pg, root) -> None:
        self.helpers, self.pg, self.root = helpers, pg, root
        self.table = f"gw_{uuid.uuid4().hex[:10]}"
        self.env = helpers.child_env(MLOPS_GATEWAY_ADMIN_TOKEN=helpers.admin_token)
        self.ports = [helpers.free_port() for _ in range(3)]
        self.replicas = [self._replica(port) for port in self.ports]
        self.upstreams: dict[str, object] = {}

    def _replica(self, port: int):
        args = [
            "-m", "serving.gateway", "--host", "127.0.0.1", "--port", str(port),
            "--state-url", self.pg.url, "--state-table", self.table,
            "--state", str(self.root / f"unused-{port}.json"), "--breaker-cooldown-s", "1",
        ]  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        return self.helpers.Proc(args, url, self.root / f"gateway-{port}.log", self.env)

    def upstream(self, name: str, model_dir=None):
        """A fake OpenAI upstream, or with ``model_dir`` the project's engine serving it."""
        port = self.helpers.free_port()
        if model_dir is None:
            args = ["-m", "testing.partners.fake", "--kind", "openai", "--name", name]
        else:
            args = ["-m", "serving.engine", "--model", str(model_dir), "--served-model-name", ROUTE]
        proc = self.helpers.Proc(
            [*args, "--port", str(port)],
            f"http://127.0.0.1:{port}",
            self.root / f"{name}.log",
            self.env,
        ).start(120)
        self.upstreams[name] = proc
        return proc

    def state(self, replica) -> dict:
        return httpx.get(
            f"{replica.url}/admin/state",
            headers={"Authorization": f"Bearer {self.helpers.admin_token}"},
            timeout=5,
        ).json()

    def wait_all(self, predicate, limit_s: float) -> float:
        """Seconds until ``predicate(state)`` holds on every replica; fails past ``limit_s``."""
        start = time.monotonic()
        pending = list(self.replicas)
        while pending:
            pending = [r for r in pending if not predicate(self.state(r))]
            elapsed = time.monotonic() - start
            assert elapsed < limit_s, f"{len(pending)} replica(s) behind after {elapsed:.2f}s"
            time.sleep(0.01)
        return time.monotonic() - start

    def restart(self, index: int, how: signal.Signals) -> None:
        replica = self.replicas[index]
        replica.proc.send_signal(how)
        replica.proc.wait(20)
        replica.start(60)
        time.sleep(1.0)  # two passing health checks at 200 ms and HAProxy sends it traffic


class Load:
    """Steady completions through HAProxy from the ``openai`` client, its retries off."""

    def __init__(self, url: str, workers: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.ok, self.failures = 0, []
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def _work(self) -> None:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)
        while not self.stop.is_set():
            try:
                client.completions.create(model=ROUTE, prompt="hi", max_tokens=2, timeout=10)
                self.ok += 1
            except openai.OpenAIError as exc:
                self.failures.append(f"{exc!r} caused by {exc.__cause__!r}")
            time.sleep(0.005)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.fixture(scope="module")
def fleet(private_postgres, tmp_path_factory, helpers):
    root = tmp_path_factory.mktemp("fleet")
    fleet = Fleet(helpers, private_postgres, root)
    try:
        stable = fleet.upstream("stable")
        for replica in fleet.replicas:
            replica.start(60)
        with helpers.HAProxy([f"127.0.0.1:{p}" for p in fleet.ports], root) as lb:
            fleet.lb = lb
            fleet.admin = GatewayAdmin(lb.url, helpers.admin_token)
            fleet.admin.put_backend("stable", stable.url)
            fleet.admin.put_route(ROUTE, "stable")
            fleet.wait_all(lambda s: ROUTE in s["routes"], 5.0)
            time.sleep(1.0)  # HAProxy has seen every replica healthy
            yield fleet
    finally:
        for proc in [*fleet.replicas, *fleet.upstreams.values()]:
            proc.stop()


def test_replicas_register_with_their_private_urls(fleet):
    listed = {r["url"] for r in fleet.admin.replicas()}
    assert listed == {r.url for r in fleet.replicas}


def test_weight_change_through_one_replica_is_in_force_on_all_within_1s(fleet):
    canary = fleet.upstreams.get("canary") or fleet.upstream("canary")
    writer = GatewayAdmin(fleet.replicas[1].url, fleet.helpers.admin_token)
    writer.put_backend("canary", canary.url)
    times = []
    for weight in (10.0, 25.0, 50.0, 75.0, 0.0):
        writer.put_route(ROUTE, "stable", "canary", weight)
        times.append(
            fleet.wait_all(
                lambda s, w=weight: s["routes"][ROUTE]["canary_weight"] == w, PROPAGATION_LIMIT_S
            )
        )
    assert max(times) < PROPAGATION_LIMIT_S
    versions = {fleet.state(r)["version"] for r in fleet.replicas}
    assert len(versions) == 1  # one state, one version everywhere
    writer.put_route(ROUTE, "stable")
    writer.remove_backend("canary")


def test_sigkill_of_one_replica_under_load_fails_no_request(fleet):
    with Load(fleet.lb.url) as load:
        time.sleep(1.0)
        victim = fleet.replicas[0]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        time.sleep(3.0)  # HAProxy marks it down; requests go to the other two
        victim.start(60)
        time.sleep(1.5)
    assert load.failures == []
    assert load.ok > 50


def test_rolling_restart_of_all_replicas_fails_no_request(fleet):
    with Load(fleet.lb.url) as load:
        for index in range(3):
            fleet.restart(index, signal.SIGTERM)
    assert load.failures == []
    assert load.ok > 50
    fleet.wait_all(lambda s: s["routes"][ROUTE]["stable"] == "stable", 5.0)


def _requests_on(url: str, backend: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for s in family.samples:
            if s.name == "gateway_backend_requests_total" and s.labels.get("backend") == backend:
                total += s.value
    return total


def test_canary_killed_under_load_is_rolled_back_on_every_replica(fleet, random_model_dir):
    canary = fleet.upstream("canary-engine", random_model_dir)
    fleet.admin.put_backend("canary", canary.url)
    fleet.admin.put_route(ROUTE, "stable", "canary", 50.0)
    config = CanaryConfig(route=ROUTE)
    with Load(fleet.lb.url) as load:
        time.sleep(2.0)
        before = [_requests_on(r.url, "canary") for r in fleet.replicas]
        fleet_stats = fleet.admin.backend_stats(ROUTE)["canary"].requests
        after = [_requests_on(r.url, "canary") for r in fleet.replicas]
        assert min(before) > 0  # every replica sends the canary traffic ...
        assert sum(before) <= fleet_stats <= sum(after)  # ... and the fleet view is their sum
        assert check_canary_health(fleet.admin, config).healthy
        canary.kill()
        deadline = time.monotonic() + 10
        while (verdict := check_canary_health(fleet.admin, config)).healthy:
            assert time.monotonic() < deadline, "fleet health check never saw the dead canary"
            time.sleep(0.1)
        assert rollback(fleet.admin, ROUTE) == "canary"
        elapsed = fleet.wait_all(
            lambda s: s["routes"][ROUTE]["canary"] is None and "canary" not in s["backends"],
            PROPAGATION_LIMIT_S,
        )
        time.sleep(1.0)
    assert "canary" in verdict.reason
    assert elapsed < PROPAGATION_LIMIT_S
    assert load.failures == []  # the stable retry hid every canary failure


def _gauge(url: str, name: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for s in family.samples:
            if s.name == name:
                return s.value
    raise AssertionError(f"{name} not exported by {url}")


def test_postgres_restart_mid_load_fails_no_request_and_state_resyncs(fleet):
    with Load(fleet.lb.url) as load:
        time.sleep(0.5)
        fleet.pg.stop()
        try:
            deadline = time.monotonic() + 10
            for r in fleet.replicas:
                while (health := httpx.get(f"{r.url}/health", timeout=5)).json()[
                    "state"
                ] != "stale":
                    assert time.monotonic() < deadline, "replica never noticed PostgreSQL down"
                    time.sleep(0.1)
                assert health.status_code == 200 and "stale_since" in health.json()
                assert _gauge(r.url, "gateway_state_connected") == 0
                assert _gauge(r.url, "gateway_state_staleness_seconds") > 0
            refused = httpx.post(
                f"{fleet.replicas[0].url}/admin/routes/{ROUTE}/weight",
                json={"canary_weight": 0},
                headers={"Authorization": f"Bearer {fleet.helpers.admin_token}"},
                timeout=15,
            )
            assert refused.status_code == 503
            assert "PostgreSQL" in refused.json()["error"]["message"]
            time.sleep(1.0)  # still serving from the last known state
        finally:
            fleet.pg.start()
        deadline = time.monotonic() + 10
        for r in fleet.replicas:
            while httpx.get(f"{r.url}/health", timeout=5).json()["state"] != "current":
                assert time.monotonic() < deadline, "replica never resynchronised"
                time.sleep(0.1)
        writer = GatewayAdmin(fleet.replicas[2].url, fleet.helpers.admin_token)
        writer.put_backend("after-restart", fleet.upstreams["stable"].url)
        # resynchronised: a write after the restart reaches every replica (each re-opens its
        # LISTEN connection first; the 1 s figure is the weight-change test's, on a steady link)
        fleet.wait_all(lambda s: "after-restart" in s["backends"], RESYNC_LIMIT_S)
        time.sleep(0.5)
    assert load.failures == []
    assert load.ok > 50
