"""`partner_health_sensor`: fail a fallback route over to the sovereign model, and back.

Every `MLOPS_PARTNER_SENSOR_INTERVAL_S` seconds (default 30) it reads the gateway of the
local stack (`stack.json` under `$MLOPS_HOME/serving`, the admin token as the stack
keeps it) at `GET /admin/partners` and applies `policy.decide`: a route whose partner is
degraded or down starts `failover_to_sovereign`; a route the failover pinned, whose
partners have all been healthy for one interval on top of the gateway's hysteresis, starts
`restore_partners`. The evidence (partner states, reasons, stats) goes into the run config,
the run key names the event, so each outage and each recovery starts exactly one run.

The sensor itself changes nothing: the runs do, so every change is a materialization of
`routing_state` in the UI. No stack, no partners, nothing to do: the tick is skipped with
the reason.
"""

import time

import dagster as dg

from observability.settings import DEFAULT_SENSOR_INTERVAL_S
from orchestration.defs.serving.resources import ServingStack
from orchestration.resources import MlopsHome
from serving.gateway.client import AdminError
from serving.stack import StackError

from .policy import decide
from .resources import sensor_interval_s
from .routing import failover_to_sovereign, restore_partners

NAME = "partner_health_sensor"
_JOBS = {"failover": failover_to_sovereign.name, "restore": restore_partners.name}


def run_request(decision) -> dg.RunRequest:
    config = {"action": decision.action, "route": decision.route, "evidence": decision.evidence}
    return dg.RunRequest(
        run_key=decision.run_key,
        job_name=_JOBS[decision.action],
        run_config={"ops": {"routing_state": {"config": config}}},
        tags={"mlops/route": decision.route, "mlops/reason": decision.reason[:200]},
    )


def partner_health_sensor_every(interval_s: int) -> dg.SensorDefinition:
    """The sensor ticking every ``interval_s`` seconds. Dagster fixes a sensor's minimum
    interval when it is defined, so the code location builds it from its settings; the
    sustain time is read again at each tick, from the same variable."""
    return dg.sensor(
        name=NAME,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=[failover_to_sovereign, restore_partners],
        description=(
            "Fails fallback routes over to the sovereign model when a partner degrades, and "
            "restores them after a sustained recovery."
        ),
    )(_partner_health)


def _partner_health(
    context: dg.SensorEvaluationContext, mlops: MlopsHome, serving_stack: ServingStack
):
    home = mlops.root()
    try:
        admin = serving_stack.gateway(home)
        if admin is None:
            return dg.SkipReason(f"serving stack under {home} is not running")
        view = admin.partners()
    except (AdminError, StackError) as exc:  # a restarting gateway is the supervisor's job
        return dg.SkipReason(f"gateway admin API unavailable: {exc}")
    if not view.get("partners"):
        return dg.SkipReason("no partners declared on the gateway")
    decisions = decide(view, time.time(), float(sensor_interval_s()))
    requests = [run_request(d) for d in decisions if d.action != "none"]
    for d in decisions:
        context.log.info(f"{NAME}: {d.action}: {d.reason}")
    if not requests:
        text = "; ".join(d.reason for d in decisions) or "no fallback routes declared"
        return dg.SkipReason(f"nothing to do: {text}")
    return dg.SensorResult(run_requests=requests)


#: At the default interval, for evaluating the sensor directly; the code location builds its
#: own with :func:`partner_health_sensor_every` from the configured interval.
partner_health_sensor = partner_health_sensor_every(DEFAULT_SENSOR_INTERVAL_S)
