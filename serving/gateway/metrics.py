"""Prometheus metrics of the gateway, per route and backend.

Counters are per attempt (a retried request counts once on each backend it tried), which is
what canary analysis needs: the canary's own error rate, even when users never saw the
errors. ``gateway_responses_total`` is what clients saw. Breaker states and canary weights
are read from the routing table at scrape time, so they can never go stale. Label children
are cached because ``.labels()`` is measurable on the proxy hot path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.gateway.routing import RoutingTable

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
        for name, backend in self.table.backends.items():
            breaker.add_metric([name], int(backend.breaker.state))
        weight = GaugeMetricFamily(
            "gateway_route_canary_weight",
            "Percent of route traffic sent to the canary first",
            labels=["route", "canary"],
        )
        for name, route in self.table.routes.items():
            weight.add_metric([name, route.canary or ""], route.canary_weight)
        yield breaker
        yield weight


class GatewayMetrics:
    def __init__(self, table: RoutingTable, registry: CollectorRegistry | None = None) -> None:
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
        self._responses = Counter(
            "gateway_responses", "Responses returned to clients", ["route", "code"], registry=r
        )
        r.register(_TableCollector(table))
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

    def response(self, route: str, code: int) -> None:
        self._child(self._responses, route, str(code)).inc()
