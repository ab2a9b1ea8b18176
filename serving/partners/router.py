"""Partners and fallback routes: the part of the routing table that names commercial APIs.

A :class:`Partner` is a :class:`~serving.partners.spec.PartnerSpec` with its live
:class:`~serving.partners.health.PartnerHealth`. A :class:`FallbackRoute` (``auto``) is an
ordered list of choices, partner names or local route names, whose last entry is always a
local route: every fallback route ends in the sovereign model. A pin (set by an operator or
the failover job) moves one entry to the front; the entries after it in the order stay
behind it as fallbacks, so a pin never makes a request fail that the order would have served.

Partners, local routes and fallback routes share one namespace (the ``model`` a client
sends), so :class:`PartnerTable` checks names against the local routes too: any object
with a ``routes`` mapping (:class:`LocalRoutes`, in practice the gateway's routing table),
so this package needs nothing from the gateway. Plain data with ``to_dict``/``load_dict``;
health is runtime only and starts ``healthy`` after a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from serving.errors import InvalidRequest, NotFound
from serving.partners.health import HealthPolicy, PartnerHealth
from serving.partners.spec import PartnerSpec

log = logging.getLogger(__name__)


class LocalRoutes(Protocol):
    """The local side of the model namespace: route names a fallback route may end in."""

    @property
    def routes(self) -> Mapping[str, object]: ...


@dataclass
class Partner:
    spec: PartnerSpec
    health: PartnerHealth

    @property
    def name(self) -> str:
        return self.spec.name

    def status(self) -> dict:
        return {
            "kind": self.spec.kind,
            "model": self.spec.model,
            "base_url": self.spec.base_url,
            **self.health.status(),
        }


@dataclass
class FallbackRoute:
    name: str
    order: list[str]
    pinned: str | None = None
    pinned_at: float | None = None
    pinned_reason: str | None = None

    def choices(self) -> list[str]:
        if self.pinned is None:
            return self.order
        return [self.pinned, *(e for e in self.order if e != self.pinned)]

    def to_dict(self) -> dict:
        return {
            "order": list(self.order),
            "pinned": self.pinned,
            "pinned_at": self.pinned_at,
            "pinned_reason": self.pinned_reason,
        }


@dataclass
class PartnerTable:
    routing: LocalRoutes
    policy: HealthPolicy = field(default_factory=HealthPolicy)
    partners: dict[str, Partner] = field(default_factory=dict)
    fallback_routes: dict[str, FallbackRoute] = field(default_factory=dict)
    wall: Callable[[], float] = time.time

    def names_in_use(self, name: str) -> str | None:
        """What ``name`` already is in the shared model namespace, if anything."""
        if name in self.routing.routes:
            return "local route"
        if name in self.partners:
            return "partner"
        if name in self.fallback_routes:
            return "fallback route"
        return None

    def put_partner(self, spec: PartnerSpec) -> Partner:
        taken = self.names_in_use(spec.name)
        if taken not in (None, "partner"):
            raise InvalidRequest(f"{spec.name!r} is already a {taken}; pick another name", "name")
        old = self.partners.get(spec.name)
        if old is not None and old.spec == spec:
            return old
        health = PartnerHealth(spec.name, self.policy, probes_enabled=spec.probe_interval_s > 0)
        partner = self.partners[spec.name] = Partner(spec, health)
        return partner

    def remove_partner(self, name: str) -> None:
        if name not in self.partners:
            raise NotFound(f"no partner named {name!r}", "name")
        users = [r.name for r in self.fallback_routes.values() if name in r.order]
        if users:
            raise InvalidRequest(
                f"partner {name!r} is listed by fallback routes {users}; change them first", "name"
            )
        del self.partners[name]

    def put_fallback_route(
        self, name: str, order: list[str], lenient: bool = False
    ) -> FallbackRoute:
        """``lenient`` (the config file at start-up) accepts a last entry that is not a local
        route *yet*: the sovereign route is often registered after the gateway starts."""
        taken = self.names_in_use(name)
        if taken not in (None, "fallback route"):
            raise InvalidRequest(f"{name!r} is already a {taken}; pick another name", "name")
        self._check_order(name, order, lenient)
        old = self.fallback_routes.get(name)
        route = FallbackRoute(name, list(order))
        if old is not None and old.pinned in order:
            route.pinned, route.pinned_at, route.pinned_reason = (
                old.pinned,
                old.pinned_at,
                old.pinned_reason,
            )
        self.fallback_routes[name] = route
        return route

    def pin(self, name: str, target: str, reason: str) -> FallbackRoute:
        route = self._route(name)
        if target not in route.order:
            raise InvalidRequest(
                f"pin target {target!r} is not an entry of {name!r} ({route.order})", "target"
            )
        route.pinned, route.pinned_at, route.pinned_reason = target, self.wall(), reason
        return route

    def unpin(self, name: str) -> FallbackRoute:
        route = self._route(name)
        route.pinned = route.pinned_at = route.pinned_reason = None
        return route

    def status(self) -> dict:
        return {
            "partners": {n: p.status() for n, p in self.partners.items()},
            "fallback_routes": {n: r.to_dict() for n, r in self.fallback_routes.items()},
        }

    def to_dict(self) -> dict:
        return {
            "partners": {n: p.spec.to_dict() for n, p in self.partners.items()},
            "fallback_routes": {n: r.to_dict() for n, r in self.fallback_routes.items()},
        }

    def load_dict(self, data: dict) -> None:
        for name, spec in data.get("partners", {}).items():
            self.put_partner(PartnerSpec.from_dict(name, spec))
        for name, r in data.get("fallback_routes", {}).items():
            route = self.put_fallback_route(name, r["order"], lenient=True)
            route.pinned, route.pinned_at, route.pinned_reason = (
                r.get("pinned"),
                r.get("pinned_at"),
                r.get("pinned_reason"),
            )

    def replace_dict(self, data: dict) -> None:
        """Become exactly ``data`` (after the routing table adopted its part); a partner whose
        spec is unchanged keeps its live health."""
        fresh = PartnerTable(self.routing, self.policy, wall=self.wall)
        fresh.load_dict(data)
        for name, partner in fresh.partners.items():
            old = self.partners.get(name)
            if old is not None and old.spec == partner.spec:
                fresh.partners[name] = old
        self.partners, self.fallback_routes = fresh.partners, fresh.fallback_routes

    def _route(self, name: str) -> FallbackRoute:
        route = self.fallback_routes.get(name)
        if route is None:
            raise NotFound(f"no fallback route named {name!r}", "name")
        return route

    def _check_order(self, name: str, order: list[str], lenient: bool) -> None:
        if not order:
            raise InvalidRequest(f"fallback route {name!r}: order must not be empty", "order")
        if len(set(order)) != len(order):
            raise InvalidRequest(f"fallback route {name!r}: order repeats an entry", "order")
        *firsts, last = order
        for entry in firsts:
            if entry not in self.partners and entry not in self.routing.routes:
                raise InvalidRequest(
                    f"fallback route {name!r}: {entry!r} is neither a partner nor a local route",
                    "order",
                )
        if last in self.routing.routes:
            return
        if lenient and self.names_in_use(last) is None:
            log.warning(
                "fallback route %r ends in %r, which is not a local route yet;"
                " it serves once that route is registered",
                name,
                last,
            )
            return
        raise InvalidRequest(
            f"fallback route {name!r}: the last entry must be a local route (the sovereign"
            f" model), got {last!r}; local routes: {sorted(self.routing.routes)}",
            "order",
        )
