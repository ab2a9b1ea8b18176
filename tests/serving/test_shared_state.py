"""Contract: adopting a new stored state keeps each replica's runtime state (breakers and
in-flight counts of unchanged backends, health of unchanged partners, key usage) and drops
it for what changed; the state file store loses no change between two writers and carries a
version; an admin change on a replica applies to the latest stored state, not to its stale
memory; the fleet's partner state is the one a strict majority of replicas reports.
"""

from __future__ import annotations

import asyncio
import threading

from serving.breaker import BreakerState
from serving.gateway.client import fleet_partner_state
from serving.gateway.keys import KeyTable
from serving.gateway.routing import RoutingTable
from serving.gateway.shared_state import SharedState
from serving.gateway.state_store import FileStateStore
from serving.partners.router import PartnerTable
from serving.partners.spec import PartnerSpec

STATE = {
    "backends": {
        "a": {"url": "http://a:1", "timeout_s": 5.0, "model": None, "max_concurrency": 4},
        "b": {"url": "http://b:1", "timeout_s": 5.0, "model": None, "max_concurrency": 4},
    },
    "routes": {"r": {"stable": "a", "canary": "b", "canary_weight": 10.0}},
}


def test_adoption_keeps_runtime_state_of_unchanged_backends_only():
    table = RoutingTable(breaker_threshold=1)
    table.load_dict(STATE)
    a, b = table.backends["a"], table.backends["b"]
    a.breaker.failure()
    b.breaker.failure()
    assert a.slots.try_acquire()
    changed = {
        "backends": {**STATE["backends"], "b": {**STATE["backends"]["b"], "url": "http://b:2"}},
        "routes": {"r": {"stable": "a", "canary": "b", "canary_weight": 50.0}},
    }
    table.replace_dict(changed)
    assert table.backends["a"].breaker.state is BreakerState.OPEN  # same upstream: kept
    assert table.backends["a"].slots.in_flight == 1
    assert table.backends["b"].breaker.state is BreakerState.CLOSED  # new upstream: fresh
    assert table.routes["r"].canary_weight == 50.0
    table.replace_dict({"backends": {"a": STATE["backends"]["a"]}, "routes": {}})
    assert set(table.backends) == {"a"} and table.routes == {}


def test_adoption_keeps_partner_health_and_key_usage():
    table = RoutingTable()
    table.load_dict(STATE)
    partners = PartnerTable(table)
    spec = PartnerSpec.from_dict("gpt", {"kind": "openai", "model": "m", "base_url": "http://p"})
    partners.put_partner(spec)
    health = partners.partners["gpt"].health
    keys = KeyTable()
    keys.create("team")
    keys.keys["team"].charge_request(keys.clock())
    data = {**table.to_dict(), **partners.to_dict(), **keys.to_dict()}
    partners.replace_dict(data)
    keys.replace_dict(data)
    assert partners.partners["gpt"].health is health
    assert len(keys.keys["team"].requests) == 1


def test_file_store_loses_no_change_between_two_writers(tmp_path):
    path = tmp_path / "state.json"
    stores = [FileStateStore(path) for _ in range(2)]

    def bump(data):
        return {**data, "count": data.get("count", 0) + 1}, None

    threads = [
        threading.Thread(target=lambda s=s: [s.update(bump, {}) for _ in range(30)]) for s in stores
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    snapshot = stores[0].read()
    assert snapshot.data == {"count": 60} and snapshot.version == 60
    assert stores[1].version() == 60


def _replica(store: FileStateStore) -> SharedState:
    table = RoutingTable()
    shared = SharedState(store, table, PartnerTable(table), KeyTable())
    shared.load()
    return shared


def test_admin_change_applies_to_the_latest_stored_state_not_stale_memory(tmp_path):
    path = tmp_path / "state.json"
    one, two = _replica(FileStateStore(path)), _replica(FileStateStore(path))
    asyncio.run(one.change(lambda t, _p, _k: t.put_backend("a", "http://a:1")))
    assert "a" not in two.table.backends  # two has not synced yet: its memory is stale
    asyncio.run(two.change(lambda t, _p, _k: t.put_backend("b", "http://b:1")))
    assert set(two.table.backends) == {"a", "b"}  # one's change survived two's write
    assert FileStateStore(path).read().data["backends"].keys() == {"a", "b"}


def test_fleet_partner_state_is_the_majority_view():
    assert fleet_partner_state(["down"]) == "down"
    assert fleet_partner_state(["down", "healthy", "healthy"]) == "healthy"
    assert fleet_partner_state(["down", "degraded", "healthy"]) == "degraded"
    assert fleet_partner_state(["down", "down", "healthy"]) == "down"
    assert fleet_partner_state(["down", "healthy"]) == "healthy"  # no strict majority
