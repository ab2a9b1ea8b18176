"""The `routing_state` asset and its two jobs: `failover_to_sovereign` and `restore_partners`.

Each materialization is one routing decision on a fallback route, so the asset's history in
the Dagster UI is the history of failovers and recoveries, each with the partner states the
decision was taken on and the sensor's evidence.

* **failover** makes sure the sovereign model serves (a running stack whose `sovereign-lm`
  engine is healthy is left alone; otherwise the registry's champion is brought up through
  `serving_stack`), then pins the route to `sovereign-lm` with the reason. The pin comes
  last: pinning to an engine that is not up would turn a partner outage into a full one.
* **restore** lifts the pin, so the route is partner-first again.

Both are idempotent: a route already pinned (or already unpinned) is left as it is and the
materialization records `changed: false`. The action is preset by each job; a run config
that contradicts its job is refused.
"""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import httpx

from orchestration.defs.registry.resources import MlflowResource
from orchestration.defs.serving.resources import ServingStack
from orchestration.resources import MlopsHome
from registry import CHAMPION, RegistryError
from registry.versions import ModelIntegrityError, fetch_model_dir
from serving.engine.launcher import EngineUnavailable
from serving.gateway.client import AdminError, GatewayAdmin
from serving.stack import ROUTE, StackError

from .policy import FAILOVER_REASON_PREFIX

OWNERS = ["team:ml-platform"]
JOB_ACTIONS = {"failover_to_sovereign": "failover", "restore_partners": "restore"}
_EXPECTED = (AdminError, StackError, RegistryError, ModelIntegrityError, EngineUnavailable)


class RoutingConfig(dg.Config):
    action: Literal["failover", "restore"]
    """`failover`: pin the route to the sovereign model; `restore`: unpin it."""
    route: str = "auto"
    """The fallback route to act on."""
    evidence: dict[str, Any] = {}
    """What the sensor saw (partner states, reasons, stats); recorded as metadata."""


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else "-"


def partners_markdown(view: dict, order: list[str]) -> str:
    """The route's partners as the gateway reports them, one row each."""
    rows = [
        "| partner | state | since | reason | breaker | error rate | p95 s |",
        "| --- | --- | --- | --- | --- | ---: | ---: |",
    ]
    for name in order:
        p = (view.get("partners") or {}).get(name)
        if p is None:
            continue
        stats = p.get("stats") or {}
        p95 = stats.get("p95_s")
        cells = [
            name,
            str(p.get("state")),
            _iso(p.get("since")),
            str(p.get("reason") or "-"),
            str(p.get("breaker") or "-"),
            f"{stats.get('error_rate', 0.0):.2f}",
            f"{p95:.3f}" if p95 is not None else "-",
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def _route(view: dict, route: str) -> dict:
    entry = (view.get("fallback_routes") or {}).get(route)
    if entry is None:
        known = ", ".join(sorted(view.get("fallback_routes") or {})) or "none"
        raise dg.Failure(
            f"the gateway has no fallback route {route!r} (routes: {known}); declare it under "
            "fallback_routes in the serving config, or pass an existing route"
        )
    return entry


def _sovereign_healthy(serving: ServingStack, home: Path, admin: GatewayAdmin) -> str | None:
    """The engine serving `sovereign-lm` when the stack reports it healthy, else `None`."""
    stable = (admin.state()["routes"].get(ROUTE) or {}).get("stable")
    engine = serving.paths(home).read_stack().get("engines", {}).get(stable or "", {})
    return stable if engine.get("healthy") else None


def ensure_sovereign(
    context: dg.AssetExecutionContext,
    serving: ServingStack,
    registry: MlflowResource,
    home: Path,
) -> tuple[GatewayAdmin, dict]:
    """A running gateway whose `sovereign-lm` engine is healthy; starts the champion if not."""
    admin = serving.gateway(home)
    engine = _sovereign_healthy(serving, home, admin) if admin is not None else None
    if engine is not None:
        return admin, {"sovereign_engine": engine, "sovereign_started": False}
    client = registry.client()
    champion = client.aliases().get(CHAMPION)
    if champion is None:
        raise dg.Failure(
            f"{ROUTE} is not serving and {client.config.model_name} has no champion to start: "
            "run train_and_deploy first; the route is left unpinned"
        )
    context.log.warning(f"{ROUTE} is not serving: starting champion v{champion}")
    admin = serving.serve(home, fetch_model_dir(client, champion, home / "serving" / "models"))
    engine = _sovereign_healthy(serving, home, admin) or "unknown"
    return admin, {
        "sovereign_engine": engine,
        "sovereign_started": True,
        "champion_version": champion,
    }


def _trigger(config: RoutingConfig, run_id: str) -> str:
    partners = (config.evidence or {}).get("partners") or {}
    unhealthy = [
        f"{name} {p.get('state')} ({p.get('reason') or 'no reason given'})"
        for name, p in sorted(partners.items())
        if p.get("state") != "healthy"
    ]
    return "; ".join(unhealthy) or f"requested by run {run_id}"


@dg.asset(group_name="serving", owners=OWNERS, kinds={"python"})
def routing_state(
    context: dg.AssetExecutionContext,
    config: RoutingConfig,
    mlops: MlopsHome,
    serving_stack: ServingStack,
    mlflow_registry: MlflowResource,
) -> dg.MaterializeResult:
    """Where a fallback route (`auto`) sends traffic: partner-first, or pinned to the
    sovereign model after a partner outage. One materialization per failover or restore,
    with the partner states and the sensor's evidence it was decided on."""
    expected = JOB_ACTIONS.get(context.job_name)
    if expected and config.action != expected:
        raise dg.Failure(
            f"job {context.job_name} only runs action {expected!r}, got {config.action!r}; "
            f"run {'restore_partners' if expected == 'failover' else 'failover_to_sovereign'}"
        )
    home = mlops.root()
    extra: dict = {}
    try:
        if config.action == "failover":
            admin, extra = ensure_sovereign(context, serving_stack, mlflow_registry, home)
            entry = _route(admin.partners(), config.route)
            changed = entry.get("pinned") != ROUTE
            if changed:
                reason = f"{FAILOVER_REASON_PREFIX} {_trigger(config, context.run_id)}"
                admin.pin(config.route, ROUTE, reason)
        else:
            admin = serving_stack.gateway(home)
            if admin is None:
                raise dg.Failure(
                    f"the serving stack under {home} is not running, so {config.route!r} "
                    "cannot be unpinned; start it (python -m serving up), then re-run"
                )
            changed = bool(_route(admin.partners(), config.route).get("pinned"))
            if changed:
                admin.unpin(config.route)
        view = admin.partners()
    except (*_EXPECTED, httpx.HTTPError) as exc:
        raise dg.Failure(description=str(exc), metadata={"error": type(exc).__name__}) from exc

    entry = _route(view, config.route)
    order = list(entry.get("order") or [])
    context.log.info(
        f"routing_state: {config.action} on {config.route}: pinned={entry.get('pinned')} "
        f"(changed: {changed})"
    )
    return dg.MaterializeResult(
        metadata={
            "action": config.action,
            "route": config.route,
            "pinned_target": entry.get("pinned") or "none",
            "pinned_reason": entry.get("pinned_reason") or "-",
            "changed": changed,
            "order": ", ".join(order),
            "partner_states": dg.MetadataValue.json(
                {n: view["partners"][n].get("state") for n in order if n in view["partners"]}
            ),
            "partners": dg.MetadataValue.md(partners_markdown(view, order)),
            "evidence": dg.MetadataValue.json(config.evidence),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "gateway_url": dg.MetadataValue.url(admin.url),
            **extra,
        }
    )


def _preset(action: str) -> dict:
    return {"ops": {"routing_state": {"config": {"action": action, "route": "auto"}}}}


failover_to_sovereign = dg.define_asset_job(
    "failover_to_sovereign",
    selection=dg.AssetSelection.assets(routing_state),
    config=_preset("failover"),
    description=(
        "Pins fallback route `auto` to the sovereign model (started from the champion if "
        "needed), recording the evidence."
    ),
)
restore_partners = dg.define_asset_job(
    "restore_partners",
    selection=dg.AssetSelection.assets(routing_state),
    config=_preset("restore"),
    description="Unpins fallback route `auto`: partner-first again.",
)
