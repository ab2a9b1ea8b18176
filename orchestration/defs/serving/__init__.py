"""Dagster definitions of the serving domain: the `deployment` canary rollout, the `deploy`
job, the `canary_health_sensor` and the `serving_stack` resource."""

from __future__ import annotations

import dagster as dg

from .assets import deploy, deployment
from .resources import ServingStack
from .sensors import canary_health_sensor

__all__ = ["ServingStack", "defs"]

defs = dg.Definitions(
    assets=[deployment],
    jobs=[deploy],
    sensors=[canary_health_sensor],
    resources={"serving_stack": ServingStack()},
)
