"""Contract: routing core and gateway state: breaker transitions, weighted attempt plans with
the stable retry, per-backend concurrency limits that shed without touching the breaker,
the name rule, table validation, and atomic, crash-safe persistence.
"""

from __future__ import annotations

import json
import time

import pytest

from serving.breaker import BreakerState, CircuitBreaker
from serving.errors import InvalidRequest
from serving.gateway.routing import RoutingTable, check_name
from serving.gateway.state import StateStore


def test_breaker_opens_half_opens_and_closes():
    breaker = CircuitBreaker(threshold=2, cooldown_s=0.05)
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    time.sleep(0.06)
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    time.sleep(0.06)
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def table() -> RoutingTable:
    t = RoutingTable(breaker_threshold=1, breaker_cooldown_s=60)
    t.put_backend("a", "http://127.0.0.1:1")
    t.put_backend("b", "http://127.0.0.1:2")
    return t


def plan(route, t) -> list[str]:
    """The attempt plan's backend names, each slot given back as the proxy would."""
    names = []
    for backend in route.attempts(t.backends, []):
        names.append(backend.name)
        backend.slots.release()
    return names


def test_attempts_try_canary_then_stable():
    t = table()
    route = t.put_route("r", "a", "b", 100)
    assert plan(route, t) == ["b", "a"]
    t.backends["b"].breaker.failure()  # open: the canary is skipped entirely
    assert plan(route, t) == ["a"]
    route = t.put_route("r", "a", "b", 0)
    assert plan(route, t) == ["a"]


def test_weights_split_traffic():
    t = table()
    route = t.put_route("r", "a", "b", 30)
    firsts = [plan(route, t)[0] for _ in range(4000)]
    assert 0.25 < firsts.count("b") / len(firsts) < 0.35


def test_table_validation():
    t = table()
    with pytest.raises(InvalidRequest) as e:
        t.put_route("r", "missing")
    assert e.value.param == "stable"
    with pytest.raises(InvalidRequest):
        t.put_route("r", "a", None, 10)
    with pytest.raises(InvalidRequest):
        t.put_backend("c", "ftp://x")
    t.put_route("r", "a", "b", 10)
    with pytest.raises(InvalidRequest, match="used by routes"):
        t.remove_backend("b")
    t.remove_route("r")
    t.remove_backend("b")  # no route uses it any more
    with pytest.raises(InvalidRequest, match="no route named"):
        t.remove_route("r")


def test_state_round_trip_and_corrupt_file(tmp_path):
    store = StateStore(tmp_path / "state.json")
    t = table()
    t.put_route("r", "a", "b", 40)
    store.save(t.to_dict())
    restored = RoutingTable()
    restored.load_dict(store.load())
    assert restored.to_dict() == t.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp files left
    (tmp_path / "state.json").write_text("{torn")
    assert store.load() == {}
    assert any(p.name.startswith("state.json.corrupt-") for p in tmp_path.iterdir())
    assert json.loads(json.dumps(t.to_dict()))["routes"]["r"]["canary_weight"] == 40


def test_a_full_backend_is_shed_without_touching_its_breaker():
    t = RoutingTable(breaker_threshold=1, breaker_cooldown_s=0.0)
    t.put_backend("a", "http://127.0.0.1:1", max_concurrency=2)
    route = t.put_route("r", "a")
    held = [next(route.attempts(t.backends, [])) for _ in range(2)]
    shed: list[str] = []
    assert list(route.attempts(t.backends, shed)) == [] and shed == ["a"]
    assert t.backends["a"].breaker.state is BreakerState.CLOSED
    # open, cooldown over: a shed request must not take the half-open probe slot
    t.backends["a"].breaker.failure()
    assert list(route.attempts(t.backends, [])) == []
    assert t.backends["a"].breaker.state is BreakerState.OPEN
    held[0].slots.release()
    assert plan(route, t) == ["a"]  # the probe goes to a request that really is sent
    assert t.backends["a"].breaker.state is BreakerState.HALF_OPEN
    t.put_backend("a", "http://127.0.0.1:1", max_concurrency=5)  # same url: slots kept
    assert t.backends["a"].slots.in_flight == 1 and t.backends["a"].slots.limit == 5


@pytest.mark.parametrize("bad", ["..", "", "a/b", "a\x00", "a\nb", "x" * 65, "-a", "é"])
def test_names_follow_the_rule(bad):
    with pytest.raises(InvalidRequest, match="does not match") as error:
        check_name(bad, "backend name")
    assert error.value.param == "name"
    assert check_name("engine-1.v2_a") == "engine-1.v2_a"
