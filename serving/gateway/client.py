"""Client of the gateway's admin API and metrics, for the supervisor, the canary controller
and the partner failover jobs.

Synchronous (its callers are control loops, not request paths); every call has a timeout and
a bounded retry on connection errors and 5xx, since the gateway may be restarting. 4xx is
never retried: it means the request itself is wrong, and :class:`AdminError` says why.
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
        """Partners with their health, and fallback routes with their pins."""
        return self._call("GET", "/admin/partners")

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

    def backend_stats(self, route: str) -> dict[str, BackendStats]:
        """Scrape ``/metrics`` and return cumulative stats per backend of ``route``."""
        text = httpx.get(f"{self.url}/metrics", timeout=self.timeout_s).text
        requests: dict[str, float] = {}
        errors: dict[str, float] = {}
        buckets: dict[str, list[tuple[float, float]]] = {}
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
                    buckets.setdefault(backend, []).append((float(s.labels["le"]), s.value))
        return {
            b: BackendStats(
                requests.get(b, 0.0), errors.get(b, 0.0), tuple(sorted(buckets.get(b, [])))
            )
            for b in set(requests) | set(errors) | set(buckets)
        }
