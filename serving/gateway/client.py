"""Client of the gateway's admin API and metrics, for the supervisor, the canary controller
and the partner failover jobs.

Synchronous (its callers are control loops, not request paths); every call has a timeout and
a bounded retry on connection errors and 5xx, since the gateway may be restarting. 4xx is
never retried: it means the request itself is wrong, and :class:`AdminError` says why.

Fleet view: the gateway may run as several replicas sharing one state (``--workers``,
replicas behind a load balancer). Writes go to any replica and reach all of them through the
state store. Per-replica observations are gathered from every live replica in the registry
(``GET /admin/replicas``, each with a private URL): :meth:`GatewayAdmin.backend_stats` sums
the counters, :meth:`GatewayAdmin.fleet_breakers` reports a breaker open if any replica has
it open, and :meth:`GatewayAdmin.partners` gives each partner the fleet state by majority
(see :func:`fleet_partner_state`). A replica that does not answer within the timeout is left
out of that reading, and a restarted replica counts from zero again, so a window that spans
a replica's death or restart undercounts (a breach check sees fewer errors, never more).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import httpx
from prometheus_client.parser import text_string_to_metric_families

from observability.retry import exponential, retry_call


class AdminError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"gateway admin call failed ({status}): {message}")
        self.status = status


@dataclass(frozen=True)
class BackendStats:
    """Cumulative per-backend counters of one route, from one scrape."""

    requests: float = 0.0
    errors: float = 0.0
    latency_buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count)

    def minus(self, earlier: BackendStats) -> BackendStats:
        before = dict(earlier.latency_buckets)
        return BackendStats(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            tuple((le, count - before.get(le, 0.0)) for le, count in self.latency_buckets),
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile ``q`` (Prometheus' histogram_quantile
        without interpolation); ``None`` without observations."""
        total = self.latency_buckets[-1][1] if self.latency_buckets else 0.0
        if total <= 0:
            return None
        for le, count in self.latency_buckets:
            if count >= q * total:
                return le
        return float("inf")


def _seg(name: str) -> str:
    """``name`` as one URL path segment: ``/``, ``..``, NUL and the rest cannot escape it
    (dots are unreserved, so a name of only dots is encoded by hand: clients would otherwise
    resolve it as a relative path)."""
    return name.replace(".", "%2E") if name.strip(".") == "" else quote(name, safe="")


class GatewayAdmin:
    def __init__(self, url: str, token: str, timeout_s: float = 5.0, retries: int = 3) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self.timeout_s, self.retries = timeout_s, retries

    def _call(self, method: str, path: str, json: dict | None = None) -> dict:
        def request() -> dict:
            response = httpx.request(
                method, self.url + path, json=json, timeout=self.timeout_s, headers=self._headers
            )
            if response.status_code < 400:
                return response.json()
            message = response.json().get("error", {}).get("message", response.text)
            raise AdminError(response.status_code, message)

        def transient(exc: BaseException) -> bool:  # a 4xx is the caller's mistake: no retry
            return isinstance(exc, httpx.HTTPError) or (
                isinstance(exc, AdminError) and exc.status >= 500
            )

        try:
            return retry_call(
                request,
                attempts=self.retries + 1,
                delay_s=exponential(0.25, cap_s=2.0),
                retry_on=transient,
            )
        except Exception as exc:
            if not transient(exc):
                raise
            raise AdminError(
                0, f"{method} {path} failed after {self.retries + 1} tries: {exc}"
            ) from exc

    def state(self) -> dict:
        return self._call("GET", "/admin/state")

    def put_backend(
        self,
        name: str,
        url: str,
        timeout_s: float = 30.0,
        model: str | None = None,
        max_concurrency: int | None = None,
    ) -> dict:
        body = {"url": url, "timeout_s": timeout_s, "model": model}
        if max_concurrency is not None:
            body["max_concurrency"] = max_concurrency
        return self._call("PUT", f"/admin/backends/{_seg(name)}", body)

    def remove_backend(self, name: str) -> dict:
        return self._call("DELETE", f"/admin/backends/{_seg(name)}")

    def put_route(
        self, route: str, stable: str, canary: str | None = None, canary_weight: float = 0.0
    ) -> dict:
        return self._call(
            "PUT",
            f"/admin/routes/{_seg(route)}",
            {"stable": stable, "canary": canary, "canary_weight": canary_weight},
        )

    def remove_route(self, route: str) -> dict:
        return self._call("DELETE", f"/admin/routes/{route}")

    def set_weight(self, route: str, canary_weight: float) -> dict:
        return self._call(
            "POST", f"/admin/routes/{_seg(route)}/weight", {"canary_weight": canary_weight}
        )

    def create_key(self, name: str, rpm: int | None = None, tpm: int | None = None) -> str:
        """A new client API key for ``name``; the gateway shows it only in this answer."""
        return self._call("POST", f"/admin/keys/{_seg(name)}", {"rpm": rpm, "tpm": tpm})["key"]

    def remove_key(self, name: str) -> dict:
        return self._call("DELETE", f"/admin/keys/{_seg(name)}")

    def keys(self) -> dict:
        """Whether keys are required, and each key's limits and last-minute usage."""
        return self._call("GET", "/admin/keys")

    def partners(self) -> dict:
        """Partners with their fleet health (:func:`fleet_partner_state`; ``replicas`` holds
        each replica's own state), and fallback routes with their pins."""
        views = [r.json() for r in self._each_replica("/admin/partners", auth=True)]
        merged = views[0]
        for name in merged.get("partners", {}):
            seen = [v["partners"][name] for v in views if name in v.get("partners", {})]
            state = fleet_partner_state([p["state"] for p in seen])
            chosen = next(p for p in seen if p["state"] == state)
            merged["partners"][name] = {**chosen, "replicas": [p["state"] for p in seen]}
        return merged

    def put_partner(self, name: str, spec: dict) -> dict:
        """``spec`` is ``PartnerSpec.to_dict()``: the key's variable name, never the key."""
        return self._call("PUT", f"/admin/partners/{_seg(name)}", spec)

    def remove_partner(self, name: str) -> dict:
        return self._call("DELETE", f"/admin/partners/{_seg(name)}")

    def put_fallback_route(self, name: str, order: list[str]) -> dict:
        return self._call("PUT", f"/admin/fallback-routes/{_seg(name)}", {"order": list(order)})

    def pin(self, route: str, target: str, reason: str) -> dict:
        return self._call(
            "POST",
            f"/admin/fallback-routes/{_seg(route)}/pin",
            {"target": target, "reason": reason},
        )

    def unpin(self, route: str) -> dict:
        return self._call("DELETE", f"/admin/fallback-routes/{_seg(route)}/pin")

    def replicas(self) -> list[dict]:
        """Live replicas sharing this gateway's state (``id``, private ``url``, ...); empty
        when none registered (a gateway without a reachable private URL)."""
        return self._call("GET", "/admin/replicas")["replicas"]

    def _replica_urls(self) -> list[str]:
        try:
            urls = [r["url"] for r in self.replicas()]
        except AdminError:  # store down: the one replica we reach still answers
            urls = []
        return urls or [self.url]

    def _each_replica(self, path: str, auth: bool) -> list[httpx.Response]:
        headers = self._headers if auth else None
        answers = []
        for url in self._replica_urls():
            try:
                response = httpx.get(url + path, timeout=self.timeout_s, headers=headers)
            except httpx.HTTPError:
                continue  # a replica that died since its last heartbeat
            if response.status_code == 200:
                answers.append(response)
        if not answers:
            raise AdminError(0, f"no gateway replica answered GET {path}")
        return answers

    def fleet_breakers(self) -> dict[str, str]:
        """Each backend's worst breaker state over live replicas (open > half_open > closed)."""
        rank = {"closed": 0, "half_open": 1, "open": 2}
        worst: dict[str, str] = {}
        for response in self._each_replica("/admin/state", auth=True):
            for name, state in response.json()["breakers"].items():
                if rank.get(state, 0) >= rank.get(worst.get(name, "closed"), 0):
                    worst[name] = state
        return worst

    def backend_stats(self, route: str) -> dict[str, BackendStats]:
        """Cumulative stats per backend of ``route``, summed over every live replica."""
        requests: dict[str, float] = {}
        errors: dict[str, float] = {}
        buckets: dict[str, dict[float, float]] = {}
        for response in self._each_replica("/metrics", auth=False):
            _add_samples(response.text, route, requests, errors, buckets)
        return {
            b: BackendStats(
                requests.get(b, 0.0), errors.get(b, 0.0), tuple(sorted(buckets.get(b, {}).items()))
            )
            for b in set(requests) | set(errors) | set(buckets)
        }


SEVERITY = ("healthy", "degraded", "down")


def fleet_partner_state(states: list[str]) -> str:
    """The worst state a strict majority of replicas report at or above: one replica that
    sees a partner down (its own path to it, its own bad luck) does not move the fleet, and
    each replica still routes around the partner on its own view; a majority does."""
    for state in reversed(SEVERITY):
        at_least = sum(SEVERITY.index(s) >= SEVERITY.index(state) for s in states)
        if at_least * 2 > len(states):
            return state
    return SEVERITY[0]


def _add_samples(
    text: str,
    route: str,
    requests: dict[str, float],
    errors: dict[str, float],
    buckets: dict[str, dict[float, float]],
) -> None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("route") != route:
                continue
            backend = s.labels.get("backend", "")
            if s.name == "gateway_backend_requests_total":
                requests[backend] = requests.get(backend, 0.0) + s.value
            elif s.name == "gateway_backend_errors_total":
                errors[backend] = errors.get(backend, 0.0) + s.value
            elif s.name == "gateway_backend_latency_seconds_bucket":
                le = float(s.labels["le"])
                per = buckets.setdefault(backend, {})
                per[le] = per.get(le, 0.0) + s.value
