"""Contract: partner health rules (serving/partners/health.py) and the partner/fallback table.

Health: a pattern of failures degrades, one error does not; consecutive failures open the
breaker and mark the partner down; recovery needs consecutive successes *and* a dwell time;
a 429's Retry-After (seconds or HTTP date) stops all traffic until it passes, live traffic
then waits for a successful probe, and consecutive 429s back off beyond Retry-After and mark
the partner degraded (rate limited) until probes succeed; the
time-to-first-token deadline follows the observed latency; every transition keeps its
reason. Table: fallback routes end in a local route, pins keep the rest of the order, names
do not collide, partners in use cannot be removed. Config: errors name file and field.
All with an injected clock: no sleeping.
"""

from __future__ import annotations

import email.utils

import pytest

from serving.errors import InvalidRequest, NotFound
from serving.gateway.routing import RoutingTable
from serving.partners.config import ServingConfigError, load_serving_config
from serving.partners.health import HealthPolicy, PartnerHealth, PartnerState, parse_retry_after
from serving.partners.router import PartnerTable
from serving.partners.spec import PartnerSpec

POLICY = HealthPolicy(
    min_window=4, degraded_error_rate=0.5, slow_p95_s=2.0, min_dwell_s=5.0, breaker_cooldown_s=2.0
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def health(clock: Clock, probes: bool = True) -> PartnerHealth:
    return PartnerHealth("p", POLICY, probes_enabled=probes, clock=clock, wall=clock)


def test_one_error_does_not_degrade_a_pattern_does(clock):
    h = health(clock)
    h.success(0.1)
    h.failure("status_5xx")
    h.success(0.1)
    assert h.state is PartnerState.HEALTHY  # 1 error in 3: below the window minimum
    h.failure("malformed")
    assert h.state is PartnerState.DEGRADED and not h.available()
    assert h.reason == "error rate 50% over the last 4 requests (malformed, status_5xx)"
    assert h.transitions[-1].to_dict() == {
        "at": clock.now,
        "from": "healthy",
        "to": "degraded",
        "reason": h.reason,
    }


def test_old_evidence_leaves_the_window(clock):
    h = health(clock)
    for _ in range(3):
        h.failure("status_5xx")
        h.success(0.1)
        clock.now += 31  # past the 30 s window: each pair is judged alone
    assert h.state is PartnerState.HEALTHY  # 3 failures in 6, but never 4 outcomes at once
    h.failure("status_5xx")
    assert h.stats()["window_requests"] == 1


def test_consecutive_failures_open_the_breaker_and_mark_down(clock):
    h = health(clock)
    for kind in ("connect", "connect", "timeout"):
        h.failure(kind)
    assert h.state is PartnerState.DOWN
    assert h.breaker.state.name == "OPEN"
    assert h.reason == "circuit opened after 3 consecutive failures (last: timeout)"
    assert h.stats()["timeouts"] == 1


def test_recovery_needs_consecutive_successes_and_dwell(clock):
    h = health(clock)
    for _ in range(3):
        h.failure("connect")
    assert not h.probe_due(1.0)  # breaker open: probes wait for its cooldown
    clock.now += 2.0
    assert h.probe_due(1.0)  # the half-open slot
    h.success(None, probe=True)
    assert h.breaker.state.name == "CLOSED" and h.state is PartnerState.DOWN
    h.success(None, probe=True)
    h.failure("connect", probe=True)  # a relapse restarts the count
    h.success(None, probe=True)
    h.success(None, probe=True)
    h.success(None, probe=True)
    assert h.state is PartnerState.DOWN  # 3 in a row, but only 2 s of the 5 s dwell
    clock.now += 3.0
    h.evaluate()  # the watcher's tick: the dwell elapsed without new traffic
    assert h.state is PartnerState.HEALTHY and h.available()
    assert h.reason == "3 consecutive successes after 5.0 s down"
    assert h.stats()["window_requests"] == 0  # acted-on evidence is cleared
    assert [(t.from_state.label, t.to_state.label) for t in h.transitions] == [
        ("healthy", "down"),
        ("down", "healthy"),
    ]
    assert h.transition_counts == {("healthy", "down"): 1, ("down", "healthy"): 1}
    assert h.stats()["last_probe_ok"] is True


def test_slow_partner_is_degraded_by_latency_and_relapses_wait_longer(clock):
    h = health(clock)
    for latency in (0.1, 3.0, 3.0, 3.0):
        h.success(latency)
    assert h.state is PartnerState.DEGRADED
    assert h.reason == "p95 latency 3.00 s >= 2.00 s"
    for _ in range(3):
        h.success(None, probe=True)  # fast probes, but the partner is slow for real traffic
    clock.now += 5.0
    h.evaluate()
    assert h.state is PartnerState.HEALTHY
    for _ in range(4):
        h.success(3.0)
    assert h.state is PartnerState.DEGRADED and h.dwell_s == 10.0
    assert h.reason.endswith("(relapse: 10 s before it may recover)")
    for _ in range(3):
        h.success(None, probe=True)
    clock.now += 5.0
    h.evaluate()
    assert h.state is PartnerState.DEGRADED  # the doubled dwell holds it back
    clock.now += 5.0
    h.evaluate()
    assert h.state is PartnerState.HEALTHY


def test_retry_after_blocks_all_traffic_until_it_passes(clock):
    h = health(clock)
    h.rate_limited(3.0)
    assert not h.available() and not h.probe_due(0.5)
    assert h.status()["retry_after_until"] == clock.now + 3.0
    assert h.breaker.state.name == "CLOSED"  # busy, not broken
    clock.now += 3.0
    assert h.status()["retry_after_until"] is None
    assert not h.available() and h.probe_due(0.5)  # a probe goes first, then live traffic
    h.success(None, probe=True)
    assert h.available()
    assert parse_retry_after("7", 0.0) == 7.0
    date = email.utils.formatdate(1_000_060.0, usegmt=True)
    assert parse_retry_after(date, 1_000_000.0) == 60.0
    assert parse_retry_after("soon", 0.0) is None and parse_retry_after(None, 0.0) is None


def test_consecutive_429s_back_off_and_degrade_until_probes_succeed(clock):
    h = health(clock)
    h.rate_limited(2.0)
    assert h.state is PartnerState.HEALTHY and not h.available()  # one 429: wait, no verdict
    clock.now += 2.0
    assert h.probe_due(0.5)
    h.rate_limited(2.0, probe=True)  # still refusing
    assert h.state is PartnerState.DEGRADED and h.reason.startswith("rate limited: 2 consecutive")
    assert h.status()["retry_after_until"] == clock.now + 4.0  # backed off beyond Retry-After
    clock.now += 4.0
    assert not h.available() and h.probe_due(0.5)
    h.rate_limited(2.0, probe=True)
    assert h.status()["retry_after_until"] == clock.now + 8.0
    assert h.breaker.state.name == "CLOSED"  # busy, not broken
    clock.now += 8.0
    for _ in range(POLICY.recover_successes):
        assert not h.available()
        h.success(None, probe=True)
        clock.now += 2.0
    h.evaluate()
    assert h.state is PartnerState.HEALTHY and h.available()
    h.rate_limited(2.0)
    clock.now += 2.0
    h.success(None, probe=True)  # a lone 429 then a success: the streak starts over
    assert h.consecutive_429 == 0 and h.state is PartnerState.HEALTHY


def test_without_probes_a_rate_limited_partner_gets_one_live_trial(clock):
    h = health(clock, probes=False)
    h.rate_limited(1.0)
    clock.now += 1.0
    assert h.available() and not h.available()  # one trial per cooldown
    h.success(0.1)
    assert h.available()


def test_first_token_deadline_follows_latency(clock):
    h = health(clock)
    assert h.first_token_deadline(30.0) == POLICY.ttft_floor_s
    for _ in range(3):
        h.success(0.9)
    assert h.first_token_deadline(30.0) == pytest.approx(2.7)
    assert h.first_token_deadline(2.0) == 2.0  # never beyond the partner's own timeout


def test_without_probes_a_down_partner_gets_one_live_trial_per_cooldown(clock):
    h = health(clock, probes=False)
    for _ in range(3):
        h.failure("connect")
    assert not h.available()
    clock.now += 2.0
    assert h.available()  # the half-open trial
    assert not h.available()  # one at a time


def spec(name: str, kind: str = "openai") -> PartnerSpec:
    return PartnerSpec(name, kind, "http://127.0.0.1:9", "m", api_key_env="KEY_VAR")


def partner_table() -> PartnerTable:
    routing = RoutingTable()
    routing.put_backend("engine", "http://127.0.0.1:8")
    routing.put_route("sovereign-lm", "engine")
    table = PartnerTable(routing)
    table.put_partner(spec("gpt"))
    table.put_partner(spec("claude", "anthropic"))
    return table


def test_fallback_routes_end_in_a_local_route():
    table = partner_table()
    route = table.put_fallback_route("auto", ["gpt", "claude", "sovereign-lm"])
    assert route.choices() == ["gpt", "claude", "sovereign-lm"]
    for order, message in (
        (["gpt", "claude"], "last entry must be a local route"),
        (["nope", "sovereign-lm"], "neither a partner nor a local route"),
        (["gpt", "gpt", "sovereign-lm"], "repeats"),
        ([], "must not be empty"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            table.put_fallback_route("auto", order)
    with pytest.raises(InvalidRequest, match="already a partner"):
        table.put_fallback_route("gpt", ["sovereign-lm"])
    with pytest.raises(InvalidRequest, match="already a local route"):
        table.put_partner(spec("sovereign-lm"))


def test_pin_moves_a_choice_first_and_survives_a_reorder():
    table = partner_table()
    table.put_fallback_route("auto", ["gpt", "claude", "sovereign-lm"])
    table.pin("auto", "claude", "gpt is flaky")
    assert table.fallback_routes["auto"].choices() == ["claude", "gpt", "sovereign-lm"]
    with pytest.raises(InvalidRequest, match="not an entry"):
        table.pin("auto", "missing", "x")
    table.put_fallback_route("auto", ["claude", "sovereign-lm"])
    assert table.fallback_routes["auto"].pinned == "claude"
    table.put_fallback_route("auto", ["sovereign-lm"])
    assert table.fallback_routes["auto"].pinned is None  # its target left the order
    table.unpin("auto")
    with pytest.raises(NotFound):
        table.unpin("other")


def test_partner_in_use_cannot_be_removed_and_state_round_trips():
    table = partner_table()
    table.put_fallback_route("auto", ["gpt", "sovereign-lm"])
    table.pin("auto", "sovereign-lm", "drill")
    with pytest.raises(InvalidRequest, match="listed by fallback routes"):
        table.remove_partner("gpt")
    table.remove_partner("claude")
    restored = PartnerTable(table.routing)
    restored.load_dict(table.to_dict())
    assert restored.to_dict() == table.to_dict()
    assert restored.status()["fallback_routes"]["auto"]["pinned_reason"] == "drill"


def test_config_loads_and_errors_name_file_and_field(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "partners:\n"
        "  claude: {kind: anthropic, base_url: https://api.anthropic.com,"
        " model: claude-3-5-haiku-latest, api_key_env: ANTHROPIC_API_KEY, timeout_s: 20}\n"
        "fallback_routes:\n"
        "  auto: [claude, sovereign-lm]\n"
    )
    config = load_serving_config(path)
    assert config.partners["claude"].timeout_s == 20
    assert config.fallback_routes == {"auto": ["claude", "sovereign-lm"]}
    for text, where in (
        ("partners:\n  x: {kind: cohere, base_url: http://a, model: m}\n", "partners.x.kind"),
        ("partners:\n  x: {kind: openai, model: m}\n", "partners.x"),
        ("fallback_routes:\n  auto: sovereign-lm\n", "fallback_routes.auto"),
        (
            "partners:\n  x: {kind: openai, base_url: http://a, model: m}\n"
            "fallback_routes:\n  auto: [sovereign-lm, x]\n",
            "fallback_routes.auto",
        ),
        ("partner: {}\n", "top level"),
        ("partners: [\n", "file"),
    ):
        path.write_text(text)
        with pytest.raises(ServingConfigError) as error:
            load_serving_config(path)
        assert error.value.where == where and str(path) in str(error.value)
    with pytest.raises(ServingConfigError, match="not found"):
        load_serving_config(tmp_path / "missing.yaml")
