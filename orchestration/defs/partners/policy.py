"""When to fail over to the sovereign model and when to give traffic back: pure decisions.

`partner_health_sensor` hands :func:`decide` the gateway's `GET /admin/partners` view;
each fallback route that lists partners gets one :class:`Decision`:

* not pinned, and a partner of its order is `degraded` or `down`: **failover**. The run
  key names the route and each unhealthy partner with the time it entered its state, so one
  outage starts one run however many ticks see it, and a new outage starts a new one;
* pinned by a failover, and every partner of its order `healthy` for at least
  `sustain_s` (one sensor interval on top of the gateway's own hysteresis): **restore**,
  keyed by the pin's time;
* pinned by anyone else (an operator's pin carries its own reason): left alone;
* anything else: nothing to do, with the reason.

The evidence (each partner's state, reason, breaker and stats) travels in the run config, so
the `routing_state` materialization shows what the sensor saw when it decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

#: Every pin a failover sets carries a reason starting with this; restore lifts only those.
FAILOVER_REASON_PREFIX = "failover_to_sovereign:"
_EVIDENCE_FIELDS = ("state", "since", "reason", "breaker", "retry_after_until", "stats")

Action = Literal["failover", "restore", "none"]


@dataclass(frozen=True)
class Decision:
    route: str
    action: Action
    reason: str
    run_key: str | None = None
    evidence: dict = field(default_factory=dict)


def evidence(view: Mapping, route: str, now: float) -> dict:
    """What the sensor saw of `route`: its fallback entry and each listed partner."""
    entry = (view.get("fallback_routes") or {}).get(route) or {}
    partners = view.get("partners") or {}
    return {
        "observed_at": now,
        "route": {k: entry.get(k) for k in ("order", "pinned", "pinned_at", "pinned_reason")},
        "partners": {
            name: {k: partners[name].get(k) for k in _EVIDENCE_FIELDS}
            for name in entry.get("order", [])
            if name in partners
        },
    }


def _describe(name: str, partner: Mapping) -> str:
    return f"{name} {partner.get('state')} ({partner.get('reason') or 'no reason given'})"


def decide_route(view: Mapping, route: str, now: float, sustain_s: float) -> Decision:
    entry = view["fallback_routes"][route]
    partners = view.get("partners") or {}
    listed = [name for name in entry.get("order", []) if name in partners]
    if not listed:
        return Decision(route, "none", f"{route}: no partner in its order")
    unhealthy = [n for n in listed if partners[n].get("state") != "healthy"]
    pinned = entry.get("pinned")
    if not pinned:
        if not unhealthy:
            return Decision(route, "none", f"{route}: every partner healthy")
        key = ",".join(
            f"{n}={partners[n].get('state')}@{partners[n].get('since')}" for n in unhealthy
        )
        reason = f"{route}: " + "; ".join(_describe(n, partners[n]) for n in unhealthy)
        return Decision(
            route, "failover", reason, f"failover:{route}:{key}", evidence(view, route, now)
        )
    if not (entry.get("pinned_reason") or "").startswith(FAILOVER_REASON_PREFIX):
        return Decision(
            route,
            "none",
            f"{route}: pinned to {pinned} by an operator ({entry.get('pinned_reason')!r}); "
            "unpin it through the admin API",
        )
    if unhealthy:
        return Decision(
            route,
            "none",
            f"{route}: pinned to {pinned}; still waiting for "
            + "; ".join(_describe(n, partners[n]) for n in unhealthy),
        )
    recent = [n for n in listed if now - float(partners[n].get("since") or now) < sustain_s]
    if recent:
        return Decision(
            route,
            "none",
            f"{route}: pinned to {pinned}; {', '.join(recent)} healthy for less than "
            f"{sustain_s:g}s",
        )
    reason = f"{route}: every partner ({', '.join(listed)}) healthy for at least {sustain_s:g}s"
    return Decision(
        route,
        "restore",
        reason,
        f"restore:{route}:{entry.get('pinned_at')}",
        evidence(view, route, now),
    )


def decide(view: Mapping, now: float, sustain_s: float) -> list[Decision]:
    """One decision per fallback route of the gateway, in route name order."""
    routes = view.get("fallback_routes") or {}
    return [decide_route(view, route, now, sustain_s) for route in sorted(routes)]
