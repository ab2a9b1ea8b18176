"""`ServingStack`: the local serving stack (supervisor, gateway, engines) as Dagster sees it.

A thin layer over `serving.stack`: all state lives under `$MLOPS_HOME/serving`, passed
in by the caller from the `mlops` resource at run time. The admin token is not a field:
the gateway process reads `MLOPS_GATEWAY_ADMIN_TOKEN` itself, so a token configured here
and not there would only fail later, and less clearly.

The health limits (`max_error_rate`, `breach_min_errors`) live here rather than in the
deployment's run config because two parties apply them: the rollout's own analysis and the
`canary_health_sensor`, which has no run config. They must agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg

from serving import stack
from serving.gateway.client import GatewayAdmin
from serving.stack import ROUTE, SupervisedFleet, engine_name
from serving.supervisor import StackPaths


class ServingStack(dg.ConfigurableResource):
    engine: Literal["embedded", "vllm"] = "embedded"
    """Engine kind for every model: `embedded` (this package's CPU engine) or `vllm`
    (vLLM: its CPU build from `make vllm`, or the `vllm` extra on a GPU host)."""
    gateway_port: int | None = None
    """Gateway port when the stack first starts; empty: a free port."""
    startup_timeout_s: float | None = None
    """How long an engine may take to answer `/health` after it starts; empty: by engine
    kind (180 s embedded, 600 s vLLM, which imports itself twice before loading a model)."""
    admin_timeout_s: float = 5.0
    """Timeout of each gateway admin call (retried a few times on connection errors)."""
    max_error_rate: float = 0.05
    """A canary erring more often than this (over a step, or a sensor interval) is rolled back."""
    breach_min_errors: int = 3
    """Fewer canary errors than this never trigger a rollback on error rate alone."""

    def paths(self, home: Path) -> StackPaths:
        return StackPaths.under(home)

    def fleet(self, home: Path) -> SupervisedFleet:
        return SupervisedFleet(self.paths(home), self.engine, ROUTE, self.startup_timeout_s)

    def gateway(self, home: Path) -> GatewayAdmin | None:
        """Admin client of the running gateway; `None` when the stack is not running."""
        paths = self.paths(home)
        if stack.supervisor_pid(paths) is None:
            return None
        url = (paths.read_stack().get("gateway") or {}).get("url")
        if not url:
            return None
        return GatewayAdmin(url, stack.admin_token(home), timeout_s=self.admin_timeout_s)

    def serve(self, home: Path, model_dir: Path) -> GatewayAdmin:
        """Make `model_dir` the route's stable backend, starting the stack if it is down.

        A running stack already serving `model_dir` is left alone; otherwise `serving up`
        (idempotent) re-points the route and retires the engines of earlier models. A live
        canary belongs to a rollout in progress: refuse rather than cut it short.
        """
        admin = self.gateway(home)
        if admin is not None:
            route = admin.state()["routes"].get(ROUTE) or {}
            if route.get("canary"):
                raise stack.StackError(
                    f"a canary ({route['canary']}) is live on {ROUTE!r}: another rollout is in "
                    "progress; wait for it, or roll it back, then re-run"
                )
            if route.get("stable") == engine_name(model_dir):
                return admin
        stack.up(home, model_dir, self.gateway_port, self.engine, self.startup_timeout_s)
        admin = self.gateway(home)
        assert admin is not None, "serving up returned without a running gateway"
        return admin
