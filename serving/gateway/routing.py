"""The routing core: backends, circuit breakers, routes and the attempt plan.

A :class:`Backend` is one OpenAI-compatible upstream (a local engine; partners and fallback
routes live in ``serving/partners/router.py``) with its own timeout and a passive circuit
breaker (:mod:`serving.breaker`, shared with partner health). A :class:`Route`
is what a client names in ``model``: a stable backend plus, during a rollout, a canary at a
weight in percent. :meth:`Route.attempts` yields the backends to try for one request, in
order: the weighted pick first and, when that was the canary, the stable backend as the
single retry, so a failing canary is never user-visible. Breakers are consulted lazily, one attempt at a time,
so a half-open probe slot is only taken by a request that really goes there.

Each backend also has a concurrency limit (:class:`Slots`): a backend with every slot taken
is skipped *before* its breaker is asked, and when no backend of a route has room the
request is shed with 429. A shed is the gateway's choice, not the backend's fault, so it
never touches the breaker. Names of backends, routes and partners follow :data:`NAME_RULE`,
checked at the admin API.

The table is plain data with ``to_dict``/``load_dict``; ``replace_dict`` adopts a new stored
state while keeping each unchanged backend's breaker and slots. Persistence lives in
``state_store.py``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from serving.breaker import CircuitBreaker
from serving.errors import InvalidRequest

NAME_RULE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_RULE)


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it follows :data:`NAME_RULE` (safe in URLs, paths, logs and labels)."""
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"{what} {name[:80]!r} does not match {NAME_RULE}: 1-64 characters, letters, "
            "digits, '.', '_' or '-', starting with a letter or digit",
            "name",
            "invalid_name",
        )
    return name


@dataclass
class Slots:
    """Requests in flight to one backend, at most ``limit``."""

    limit: int = 256
    in_flight: int = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1


@dataclass
class Backend:
    name: str
    url: str
    timeout_s: float = 30.0
    model: str | None = None  # the upstream's model name when it differs from the route's
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker, compare=False)
    slots: Slots = field(default_factory=Slots, compare=False)

    def __post_init__(self) -> None:
        if self.slots.limit < 1:
            raise InvalidRequest(
                f"max_concurrency must be >= 1, got {self.slots.limit}", "max_concurrency"
            )
        if not self.url.startswith(("http://", "https://")):
            raise InvalidRequest(f"backend url must be http(s)://..., got {self.url!r}", "url")
        if self.timeout_s <= 0:
            raise InvalidRequest(f"timeout_s must be > 0, got {self.timeout_s}", "timeout_s")
        self.url = self.url.rstrip("/")

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "timeout_s": self.timeout_s,
            "model": self.model,
            "max_concurrency": self.slots.limit,
        }

    def admit(self, shed: list[str]) -> bool:
        """Take a slot and the breaker's permission, or neither; a full backend joins
        ``shed``. The caller releases the slot when the attempt ends."""
        if not self.slots.try_acquire():
            shed.append(self.name)
            return False
        if self.breaker.allow():
            return True
        self.slots.release()
        return False


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

    def attempts(self, backends: dict[str, Backend], shed: list[str]) -> Iterator[Backend]:
        """Backends to try, each with a slot taken (release it); full ones go to ``shed``."""
        stable = backends[self.stable]
        canary = backends.get(self.canary) if self.canary else None
        to_canary = (
            canary is not None
            and self.canary_weight > 0
            and (self.canary_weight >= 100 or random.random() * 100 < self.canary_weight)
        )
        if to_canary and canary.admit(shed):
            yield canary
        if stable.admit(shed):
            yield stable

    def to_dict(self) -> dict:
        return {"stable": self.stable, "canary": self.canary, "canary_weight": self.canary_weight}


@dataclass
class RoutingTable:
    backends: dict[str, Backend] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    breaker_threshold: int = 3
    breaker_cooldown_s: float = 5.0
    max_concurrency: int = 256  # per backend, unless its registration says otherwise

    def put_backend(
        self,
        name: str,
        url: str,
        timeout_s: float = 30.0,
        model: str | None = None,
        max_concurrency: int | None = None,
    ) -> Backend:
        old = self.backends.get(name)
        slots = Slots(max_concurrency or self.max_concurrency)
        backend = Backend(name, url, timeout_s, model, self._breaker(), slots)
        if old is not None and old.url == backend.url:
            backend.breaker = old.breaker  # same upstream: keep what we learned about it
            backend.slots = old.slots  # and its requests in flight
            backend.slots.limit = slots.limit
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
            self.put_backend(
                name, b["url"], b.get("timeout_s", 30.0), b.get("model"), b.get("max_concurrency")
            )
        for name, r in data.get("routes", {}).items():
            self.put_route(name, r["stable"], r.get("canary"), r.get("canary_weight", 0.0))

    def replace_dict(self, data: dict) -> None:
        """Become exactly ``data``; a backend whose URL is unchanged keeps its breaker and
        its requests in flight (runtime state is per replica, never stored)."""
        fresh = RoutingTable(
            breaker_threshold=self.breaker_threshold,
            breaker_cooldown_s=self.breaker_cooldown_s,
            max_concurrency=self.max_concurrency,
        )
        fresh.load_dict(data)
        for name, backend in fresh.backends.items():
            old = self.backends.get(name)
            if old is not None and old.url == backend.url:
                limit = backend.slots.limit
                backend.breaker, backend.slots = old.breaker, old.slots
                backend.slots.limit = limit
        self.backends, self.routes = fresh.backends, fresh.routes

    def _breaker(self) -> CircuitBreaker:
        return CircuitBreaker(self.breaker_threshold, self.breaker_cooldown_s)
