"""Prometheus metrics of the gateway, per route and backend.

Counters are per attempt (a retried request counts once on each backend it tried), which is
what canary analysis needs: the canary's own error rate, even when users never saw the
errors. ``gateway_responses_total`` is what clients saw. Breaker states, canary weights,
partner states, partner transitions and pins are read from the tables at scrape time, so they
can never go stale. Partner attempts use the same per-attempt counters, with ``backend`` the
partner's name. Label children are cached because ``.labels()`` is measurable on the proxy hot path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.gateway.routing import RoutingTable
from serving.partners.router import PartnerTable

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class _TableCollector(Collector):
    def __init__(self, table: RoutingTable) -> None:
        self.table = table

    def collect(self):
        breaker = GaugeMetricFamily(
            "gateway_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            labels=["backend"],
        )
        in_flight = GaugeMetricFamily(
            "gateway_backend_in_flight",
            "Requests in flight to a backend (at most its max_concurrency)",
            labels=["backend"],
        )
        for name, backend in self.table.backends.items():
            breaker.add_metric([name], int(backend.breaker.state))
            in_flight.add_metric([name], backend.slots.in_flight)
        weight = GaugeMetricFamily(
            "gateway_route_canary_weight",
            "Percent of route traffic sent to the canary first",
            labels=["route", "canary"],
        )
        for name, route in self.table.routes.items():
            weight.add_metric([name, route.canary or ""], route.canary_weight)
        yield breaker
        yield in_flight
        yield weight


class _PartnerCollector(Collector):
    def __init__(self, partners: PartnerTable) -> None:
        self.partners = partners

    def collect(self):
        state = GaugeMetricFamily(
            "gateway_partner_state",
            "Partner health: 0 healthy, 1 degraded, 2 down",
            labels=["partner"],
        )
        transitions = CounterMetricFamily(
            "gateway_partner_transitions",
            "Partner health state changes",
            labels=["partner", "from_state", "to_state"],
        )
        for name, partner in self.partners.partners.items():
            state.add_metric([name], int(partner.health.state))
            for (before, after), count in partner.health.transition_counts.items():
                transitions.add_metric([name, before, after], count)
        pinned = GaugeMetricFamily(
            "gateway_route_pinned",
            "1 while a fallback route is pinned to a target",
            labels=["route", "target"],
        )
        for name, route in self.partners.fallback_routes.items():
            if route.pinned is not None:
                pinned.add_metric([name, route.pinned], 1)
        yield state
        yield transitions
        yield pinned


class GatewayMetrics:
    def __init__(
        self,
        table: RoutingTable,
        registry: CollectorRegistry | None = None,
        partners: PartnerTable | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._attempts = Counter(
            "gateway_backend_requests",
            "Attempts sent to a backend",
            ["route", "backend"],
            registry=r,
        )
        self._errors = Counter(
            "gateway_backend_errors",
            "Failed attempts by kind",
            ["route", "backend", "kind"],
            registry=r,
        )
        self._latency = Histogram(
            "gateway_backend_latency_seconds",
            "Latency of successful attempts (streams: until the last byte)",
            ["route", "backend"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self._retries = Counter(
            "gateway_retries",
            "Requests retried on another backend",
            ["route", "from_backend", "to_backend"],
            registry=r,
        )
        self._shed = Counter(
            "gateway_shed",
            "Attempts not sent because a backend was full or answered 429 (not faults)",
            ["route", "backend", "reason"],
            registry=r,
        )
        self._key_requests = Counter(
            "gateway_key_requests", "Requests admitted per client API key", ["key"], registry=r
        )
        self._key_tokens = Counter(
            "gateway_key_tokens",
            "Tokens charged per client API key (usage; max_tokens for streams)",
            ["key"],
            registry=r,
        )
        self._key_rejected = Counter(
            "gateway_key_rejected",
            "Requests refused per client API key (over quota)",
            ["key", "reason"],
            registry=r,
        )
        self._responses = Counter(
            "gateway_responses", "Responses returned to clients", ["route", "code"], registry=r
        )
        r.register(_TableCollector(table))
        if partners is not None:
            r.register(_PartnerCollector(partners))
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def attempt(self, route: str, backend: str) -> None:
        self._child(self._attempts, route, backend).inc()

    def error(self, route: str, backend: str, kind: str) -> None:
        self._child(self._errors, route, backend, kind).inc()

    def latency(self, route: str, backend: str, seconds: float) -> None:
        self._child(self._latency, route, backend).observe(seconds)

    def retry(self, route: str, from_backend: str, to_backend: str) -> None:
        self._child(self._retries, route, from_backend, to_backend).inc()

    def shed(self, route: str, backend: str, reason: str) -> None:
        self._child(self._shed, route, backend, reason).inc()

    def key_request(self, key: str) -> None:
        self._child(self._key_requests, key).inc()

    def key_tokens(self, key: str, tokens: int) -> None:
        self._child(self._key_tokens, key).inc(tokens)

    def key_rejected(self, key: str, reason: str) -> None:
        self._child(self._key_rejected, key, reason).inc()

    def response(self, route: str, code: int) -> None:
        self._child(self._responses, route, str(code)).inc()
