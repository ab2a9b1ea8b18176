"""Contract: ``partner_health_sensor``'s decisions (orchestration/defs/partners/policy.py)
and its interval setting.

A fallback route with an unhealthy partner and no pin fails over, keyed by the outage; a
route the failover pinned is restored only once every partner has been healthy for the
sustain time; an operator's pin is never lifted; the evidence carries what was seen.
"""

import re

import pytest

from orchestration.defs.partners.policy import FAILOVER_REASON_PREFIX, decide
from orchestration.defs.partners.resources import INTERVAL_ENV, sensor_interval_s

NOW = 1_800_000_000.0


def partner(state: str, since: float = NOW - 100, reason: str = "r") -> dict:
    return {
        "kind": "anthropic",
        "state": state,
        "since": since,
        "reason": reason,
        "breaker": "open" if state == "down" else "closed",
        "retry_after_until": None,
        "stats": {"window_requests": 4, "error_rate": 0.5, "p95_s": 0.2},
        "transitions": [],
    }


def view(partners: dict, pinned: str | None = None, reason: str | None = None) -> dict:
    return {
        "partners": partners,
        "fallback_routes": {
            "auto": {
                "order": [*partners, "sovereign-lm"],
                "pinned": pinned,
                "pinned_at": NOW - 50 if pinned else None,
                "pinned_reason": reason,
            }
        },
    }


def test_a_down_partner_on_an_unpinned_route_fails_over_with_evidence() -> None:
    seen = view(
        {
            "claude": partner("down", reason="breaker open after 3 failures"),
            "gpt": partner("healthy"),
        }
    )
    [decision] = decide(seen, NOW, 30)
    assert decision.action == "failover" and decision.route == "auto"
    assert "claude down (breaker open after 3 failures)" in decision.reason
    assert decision.run_key == f"failover:auto:claude=down@{NOW - 100}"
    evidence = decision.evidence
    assert evidence["partners"]["claude"]["state"] == "down"
    assert evidence["partners"]["claude"]["stats"]["error_rate"] == 0.5
    assert evidence["partners"]["gpt"]["state"] == "healthy"
    assert evidence["route"]["pinned"] is None and evidence["observed_at"] == NOW


def test_the_same_outage_keeps_its_run_key_and_a_new_one_gets_another() -> None:
    first = decide(view({"claude": partner("degraded", since=NOW - 5)}), NOW, 30)[0]
    later = decide(view({"claude": partner("degraded", since=NOW - 5)}), NOW + 60, 30)[0]
    again = decide(view({"claude": partner("down", since=NOW + 70)}), NOW + 80, 30)[0]
    assert first.run_key == later.run_key != again.run_key


def test_healthy_partners_and_no_pin_need_nothing() -> None:
    [decision] = decide(view({"claude": partner("healthy")}), NOW, 30)
    assert decision.action == "none" and "every partner healthy" in decision.reason


def test_restore_waits_for_a_sustained_recovery() -> None:
    reason = f"{FAILOVER_REASON_PREFIX} claude down"
    still_down = decide(view({"claude": partner("down")}, "sovereign-lm", reason), NOW, 30)[0]
    assert still_down.action == "none" and "still waiting for claude down" in still_down.reason

    fresh = view({"claude": partner("healthy", since=NOW - 10)}, "sovereign-lm", reason)
    assert decide(fresh, NOW, 30)[0].action == "none"
    assert "healthy for less than 30s" in decide(fresh, NOW, 30)[0].reason

    sustained = view({"claude": partner("healthy", since=NOW - 31)}, "sovereign-lm", reason)
    [decision] = decide(sustained, NOW, 30)
    assert decision.action == "restore"
    assert decision.run_key == f"restore:auto:{NOW - 50}"
    assert decision.evidence["route"]["pinned"] == "sovereign-lm"


def test_an_operator_pin_is_left_alone() -> None:
    pinned = view({"claude": partner("healthy")}, "sovereign-lm", "maintenance window")
    [decision] = decide(pinned, NOW, 30)
    assert decision.action == "none"
    assert "by an operator ('maintenance window')" in decision.reason


def test_a_route_without_partners_is_not_touched() -> None:
    seen = {
        "partners": {"claude": partner("down")},
        "fallback_routes": {"local": {"order": ["sovereign-lm"], "pinned": None}},
    }
    [decision] = decide(seen, NOW, 30)
    assert decision.action == "none" and "no partner in its order" in decision.reason


def test_sensor_interval_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert sensor_interval_s() == 30
    monkeypatch.setenv(INTERVAL_ENV, "5")
    assert sensor_interval_s() == 5


@pytest.mark.parametrize("bad", ["0", "-3", "fast", "1.5"])
def test_a_bad_sensor_interval_is_refused_with_the_variable_named(monkeypatch, bad) -> None:
    monkeypatch.setenv(INTERVAL_ENV, bad)
    with pytest.raises(ValueError, match=f"{INTERVAL_ENV}='{re.escape(bad)}'.*>= 1"):
        sensor_interval_s()
