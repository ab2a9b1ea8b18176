"""Contract: the canary controller promotes a good challenger, rolls back a bad one (by
probe quality, and at once when the canary dies under load, with no failed user request),
and a gateway restarted mid-rollout comes back with its weights and backends.

Runs on a real supervised stack (``python -m serving up``) with the tiny trained model as
stable. The "good" challenger is the same trained weights in another directory (a distinct
model version); the bad one has random weights. The probe set is held-out sample tasks the
trained model was fitted to answer (see conftest), so quality analysis is exact-match.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from serving.canary import CanaryConfig, CanaryController, Probe, check_canary_health, rollback
from serving.gateway.client import GatewayAdmin
from serving.stack import SupervisedFleet, engine_name
from serving.supervisor import StackPaths

pytestmark = pytest.mark.slow
FAST = dict(window_s=2.0, poll_s=0.25, steps=(10.0, 50.0, 100.0), p95_slack_s=0.5)


class LoadGenerator:
    """Steady client traffic through the gateway; records every failed request."""

    def __init__(self, url: str, prompt: str, workers: int = 3) -> None:
        self.url, self.prompt = url, prompt
        self.stop_flag = threading.Event()
        self.ok, self.failures = 0, []
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def _work(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop_flag.is_set():
                try:
                    r = client.post(
                        f"{self.url}/v1/completions",
                        json={
                            "model": "sovereign-lm",
                            "prompt": self.prompt,
                            "max_tokens": 6,
                            "temperature": 0,
                        },
                    )
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> LoadGenerator:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)


@pytest.fixture(scope="module")
def stack(stack_factory, good_model_dir, helpers):
    home, info = stack_factory(good_model_dir)
    admin = GatewayAdmin(info["gateway"]["url"], helpers.admin_token)
    fleet = SupervisedFleet(StackPaths.under(home))
    return home, info, admin, fleet


@pytest.fixture
def probes(probe_tasks):
    return [Probe(prompt, answer) for prompt, answer in probe_tasks]


def test_random_challenger_is_rolled_back_by_quality(stack, random_model_dir, probes):
    _, info, admin, fleet = stack
    stable = admin.state()["routes"]["sovereign-lm"]["stable"]
    promoted, reasons = [], []
    controller = CanaryController(admin, fleet, CanaryConfig(**FAST))
    result = controller.run(random_model_dir, probes, lambda: promoted.append(1), reasons.append)
    assert result.decision == "rolled_back" and not promoted
    assert "probe accuracy" in result.reason and reasons == [result.reason]
    assert result.timeline[-1].probe_accuracy < 0.5
    assert result.timeline[-1].stable_probe_accuracy == 1.0
    state = admin.state()
    assert state["routes"]["sovereign-lm"] == {
        "stable": stable,
        "canary": None,
        "canary_weight": 0.0,
    }
    assert engine_name(random_model_dir) not in state["backends"]
    assert fleet.pid(engine_name(random_model_dir)) is None


def test_canary_killed_under_load_rolls_back_with_zero_failed_requests(
    stack, challenger_copy, probes
):
    _, info, admin, fleet = stack
    canary = engine_name(challenger_copy)
    config = CanaryConfig(**{**FAST, "window_s": 30.0, "steps": (50.0, 100.0)})
    controller = CanaryController(admin, fleet, config)
    outcome = {}
    with LoadGenerator(info["gateway"]["url"], probes[0].prompt) as load:
        runner = threading.Thread(
            target=lambda: outcome.update(
                result=controller.run(challenger_copy, probes, lambda: None)
            )
        )
        runner.start()
        deadline = time.monotonic() + 120
        while admin.state()["routes"]["sovereign-lm"]["canary_weight"] != 50.0:
            assert time.monotonic() < deadline, "rollout never reached 50%"
            time.sleep(0.1)
        time.sleep(1.0)  # the canary is taking traffic now
        os.kill(fleet.pid(canary), signal.SIGKILL)
        killed_at = time.monotonic()
        while admin.state()["routes"]["sovereign-lm"]["canary_weight"] != 0.0:
            time.sleep(0.05)
        to_weight_zero = time.monotonic() - killed_at
        runner.join(120)
        time.sleep(1.0)  # keep load running on the stable engine after the rollback
    result = outcome["result"]
    assert result.decision == "rolled_back"
    assert to_weight_zero < 10.0
    assert result.timeline[-1].weight == 50.0 and not result.timeline[-1].passed
    assert load.failures == [] and load.ok > 10
    assert admin.state()["routes"]["sovereign-lm"]["canary"] is None


def test_gateway_restart_mid_rollout_restores_weights_and_backends(stack, challenger_copy, helpers):
    home, info, admin, fleet = stack
    stable = admin.state()["routes"]["sovereign-lm"]["stable"]
    canary = engine_name(challenger_copy)
    url = fleet.start(canary, challenger_copy)
    admin.put_backend(canary, url)
    admin.put_route("sovereign-lm", stable, canary, 25)
    before = admin.state()
    gateway_pid = StackPaths.under(home).read_stack()["gateway"]["pid"]
    os.kill(gateway_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        gw = StackPaths.under(home).read_stack()["gateway"]
        if gw["healthy"] and gw["pid"] not in (None, gateway_pid):
            break
        assert time.monotonic() < deadline, "gateway not restarted"
        time.sleep(0.2)
    after = admin.state()
    assert after["routes"] == before["routes"]
    assert after["backends"] == before["backends"]
    assert check_canary_health(admin, CanaryConfig(**FAST)).healthy
    assert rollback(admin, "sovereign-lm", fleet) == canary
    assert admin.state()["routes"]["sovereign-lm"]["canary"] is None


def test_good_challenger_is_promoted_and_old_engine_stopped(stack, challenger_copy, probes):
    _, info, admin, fleet = stack
    old = admin.state()["routes"]["sovereign-lm"]["stable"]
    old_pid = fleet.pid(old)
    promoted = []
    controller = CanaryController(admin, fleet, CanaryConfig(**FAST))
    with LoadGenerator(info["gateway"]["url"], probes[1].prompt, workers=2) as load:
        result = controller.run(challenger_copy, probes, lambda: promoted.append(True))
    assert result.decision == "promoted", result.reason
    assert promoted == [True]
    assert [s.weight for s in result.timeline] == [0.0, 10.0, 50.0, 100.0]
    assert all(s.passed for s in result.timeline)
    assert result.timeline[-1].canary["requests"] > 0
    assert result.timeline[-1].probe_accuracy == 1.0
    state = admin.state()
    new = engine_name(challenger_copy)
    assert state["routes"]["sovereign-lm"] == {"stable": new, "canary": None, "canary_weight": 0.0}
    assert set(state["backends"]) == {new}
    assert fleet.pid(old) is None
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)
    assert load.failures == []
