"""The routing core: backends, circuit breakers, routes and the attempt plan.

A :class:`Backend` is one OpenAI-compatible upstream (a local engine; partners and fallback
routes live in ``serving/partners/router.py``) with its own timeout and a passive circuit
breaker (its clock injectable, so partner health reuses it in unit tests). A :class:`Route`
is what a client names in ``model``: a stable backend plus, during a rollout, a canary at a
weight in percent. :meth:`Route.attempts` yields the backends to try for one request, in
order: the weighted pick first and, when that was the canary, the stable backend as the
single retry, so a failing canary is never user-visible. Breakers are consulted lazily, one attempt at a time,
so a half-open probe slot is only taken by a request that really goes there.

The table is plain data with ``to_dict``/``from_dict``; persistence lives in ``state.py``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum

from serving.errors import InvalidRequest


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass
class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; lets one probe through after
    ``cooldown_s``; a successful probe closes it, a failed one re-opens it."""

    threshold: int = 3
    cooldown_s: float = 5.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def allow(self) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.clock() - self.opened_at < self.cooldown_s:
                return False
            self.state = BreakerState.HALF_OPEN
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.state, self.failures, self.probing = BreakerState.CLOSED, 0, False

    def failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state, self.opened_at, self.probing = BreakerState.OPEN, self.clock(), False


@dataclass
class Backend:
    name: str
    url: str
    timeout_s: float = 30.0
    model: str | None = None  # the upstream's model name when it differs from the route's
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker, compare=False)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise InvalidRequest(f"backend url must be http(s)://..., got {self.url!r}", "url")
        if self.timeout_s <= 0:
            raise InvalidRequest(f"timeout_s must be > 0, got {self.timeout_s}", "timeout_s")
        self.url = self.url.rstrip("/")

    def to_dict(self) -> dict:
        return {"url": self.url, "timeout_s": self.timeout_s, "model": self.model}


@dataclass
class Route:
    name: str
    stable: str
    canary: str | None = None
    canary_weight: float = 0.0  # percent of requests sent to the canary first

    def __post_init__(self) -> None:
        if not 0.0 <= self.canary_weight <= 100.0:
            raise InvalidRequest(
                f"canary_weight must be in [0, 100], got {self.canary_weight}", "canary_weight"
            )
        if self.canary_weight > 0 and self.canary is None:
            raise InvalidRequest("canary_weight > 0 needs a canary backend", "canary")

    def attempts(self, backends: dict[str, Backend]) -> Iterator[Backend]:
        stable = backends[self.stable]
        canary = backends.get(self.canary) if self.canary else None
        to_canary = (
            canary is not None
            and self.canary_weight > 0
            and (self.canary_weight >= 100 or random.random() * 100 < self.canary_weight)
        )
        if to_canary and canary.breaker.allow():
            yield canary
        if stable.breaker.allow():
            yield stable

    def to_dict(self) -> dict:
        return {"stable": self.stable, "canary": self.canary, "canary_weight": self.canary_weight}


@dataclass
class RoutingTable:
    backends: dict[str, Backend] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    breaker_threshold: int = 3
    breaker_cooldown_s: float = 5.0

    def put_backend(
        self, name: str, url: str, timeout_s: float = 30.0, model: str | None = None
    ) -> Backend:
        old = self.backends.get(name)
        backend = Backend(name, url, timeout_s, model, self._breaker())
        if old is not None and old.url == backend.url:
            backend.breaker = old.breaker  # same upstream: keep what we learned about it
        self.backends[name] = backend
        return backend

    def remove_backend(self, name: str) -> None:
        if name not in self.backends:
            raise InvalidRequest(f"no backend named {name!r}", "name")
        users = [r.name for r in self.routes.values() if name in (r.stable, r.canary)]
        if users:
            raise InvalidRequest(
                f"backend {name!r} is used by routes {users}; change them first", "name"
            )
        del self.backends[name]

    def put_route(
        self, name: str, stable: str, canary: str | None = None, canary_weight: float = 0.0
    ) -> Route:
        for param, backend in (("stable", stable), ("canary", canary)):
            if backend is not None and backend not in self.backends:
                raise InvalidRequest(f"{param} backend {backend!r} is not registered", param)
        route = Route(name, stable, canary, canary_weight)
        self.routes[name] = route
        return route

    def remove_route(self, name: str) -> None:
        if self.routes.pop(name, None) is None:
            raise InvalidRequest(f"no route named {name!r}", "name")

    def to_dict(self) -> dict:
        return {
            "backends": {n: b.to_dict() for n, b in self.backends.items()},
            "routes": {n: r.to_dict() for n, r in self.routes.items()},
        }

    def breakers(self) -> dict[str, str]:
        return {n: b.breaker.state.name.lower() for n, b in self.backends.items()}

    def load_dict(self, data: dict) -> None:
        for name, b in data.get("backends", {}).items():
            self.put_backend(name, b["url"], b.get("timeout_s", 30.0), b.get("model"))
        for name, r in data.get("routes", {}).items():
            self.put_route(name, r["stable"], r.get("canary"), r.get("canary_weight", 0.0))

    def _breaker(self) -> CircuitBreaker:
        return CircuitBreaker(self.breaker_threshold, self.breaker_cooldown_s)
