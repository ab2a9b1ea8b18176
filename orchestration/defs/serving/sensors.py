"""`canary_health_sensor`: roll a failing canary back within one tick, whoever started it.

The `deployment` asset watches its own canary every half second, but only while its run
lives. This sensor is the guard that does not depend on that run: a rollout whose run
crashed or was cancelled, or a canary set by hand through the admin API, is still checked
every few seconds. Each tick with a canary live on `sovereign-lm` applies
`serving.canary.check_canary_health` (breaker open, `/health` failing, error rate over
the limit since the previous tick, kept in the cursor). A breach rolls back at once
(weight 0 first, then the canary is unrouted and its engine stopped), tags the version the
canary served with the reason (found through `rollout.json`), and records an observation
on `deployment`. No stack, or no canary: the tick is skipped.

Rollback and tagging are idempotent, so racing the rollout's own watcher is harmless.
"""

import json

import dagster as dg

from orchestration.defs.registry.resources import MlflowResource
from orchestration.resources import MlopsHome
from registry import RegistryError
from serving.canary import CanaryConfig, check_canary_health, rollback
from serving.gateway.client import AdminError, BackendStats
from serving.stack import ROUTE, StackError

from .resources import ServingStack
from .rollout import RolloutRecord, record_rollback

DEPLOYMENT = dg.AssetKey("deployment")
NAME = "canary_health_sensor"


def _baseline(cursor: str | None, canary: str) -> dict[str, BackendStats] | None:
    """Counters of `canary` at the previous tick, if that tick saw the same canary."""
    try:
        seen = json.loads(cursor) if cursor else {}
    except ValueError:
        return None
    if seen.get("canary") != canary:
        return None
    return {canary: BackendStats(seen["requests"], seen["errors"])}


@dg.sensor(
    name=NAME,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Rolls a live canary back at once when it breaches its health limits.",
)
def canary_health_sensor(
    context: dg.SensorEvaluationContext,
    mlops: MlopsHome,
    serving_stack: ServingStack,
    mlflow_registry: MlflowResource,
):
    home = mlops.root()
    try:
        admin = serving_stack.gateway(home)
        if admin is None:
            return dg.SkipReason(f"serving stack under {home} is not running")
        route = admin.state()["routes"].get(ROUTE) or {}
    except (AdminError, StackError) as exc:  # a restarting gateway is the supervisor's job
        return dg.SkipReason(f"gateway admin API unavailable: {exc}")
    canary = route.get("canary")
    if not canary:
        return dg.SensorResult(skip_reason=f"no canary live on {ROUTE}", cursor="")
    config = CanaryConfig(
        max_error_rate=serving_stack.max_error_rate,
        breach_min_errors=serving_stack.breach_min_errors,
    )
    now = admin.backend_stats(ROUTE).get(canary, BackendStats())
    verdict = check_canary_health(admin, config, _baseline(context.cursor, canary))
    cursor = json.dumps({"canary": canary, "requests": now.requests, "errors": now.errors})
    if verdict.healthy:
        return dg.SensorResult(skip_reason=f"canary {canary} healthy", cursor=cursor)

    reason = f"{NAME}: {verdict.reason}"
    context.log.warning(f"rolling back canary {canary} on {ROUTE}: {verdict.reason}")
    try:
        rollback(admin, ROUTE, serving_stack.fleet(home))
    except StackError as exc:  # unrouted already (weight 0 comes first); only the stop lags
        context.log.error(f"canary {canary} unrouted, but its engine did not stop: {exc}")
    record = RolloutRecord.load(serving_stack.paths(home))
    version = record.version if record and record.canary == canary else None
    recorded = False
    if version is not None:
        try:
            record_rollback(mlflow_registry.client(), version, reason, f"dagster-sensor:{NAME}")
            recorded = True
        except RegistryError as exc:  # traffic is safe already; say loudly what is missing
            context.log.error(f"rolled back, but could not tag version {version}: {exc}")
    observation = dg.AssetObservation(
        asset_key=DEPLOYMENT,
        metadata={
            "decision": "rolled_back",
            "reason": reason,
            "canary_backend": canary,
            "canary_version": version or "unknown",
            "stable_backend": route.get("stable") or "none",
            "registry_recorded": recorded,
        },
    )
    return dg.SensorResult(asset_events=[observation], cursor="")
