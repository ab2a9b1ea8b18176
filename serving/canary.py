"""Canary rollout of a challenger model behind the gateway, with automated rollback.

Domain logic only (no Dagster): the orchestration layer supplies the registry actions as
callables (``promote``; ``on_rollback`` to record the reason) and the engine fleet.

The rollout: start an engine for the challenger dir, register it as the route's canary at
weight 0, run the probe set against it (a challenger that cannot answer never sees a user),
then step the weight (default 10 -> 25 -> 50 -> 100). Each step holds for ``window_s``;
every ``poll_s`` :func:`check_canary_health` looks for a breach (canary breaker open, canary
``/health`` failing, canary error rate over the limit), and a breach rolls back at once. At
the end of a window the step is analysed canary vs stable from the gateway's own metrics
(per-backend error rate and p95 latency over the window) plus the probes: exact-match
accuracy on held-out tasks and, on any corpus, likelihood of held-out texts
(``canary_evidence.py``). A step passes only on evidence: at least ``min_requests`` canary
requests, from users or, when users are too few, from probes the controller sends through
the gateway itself; with nothing to probe with, the step holds up to ``max_hold_s`` longer
for user traffic. Still too little evidence -> decision ``inconclusive``: traffic goes back
to stable, nothing is promoted, and the model is not blamed. All steps pass ->
``promote()``, the canary becomes the stable backend and the old engine stops. Any failure
-> weight 0, canary removed and stopped, reason returned. The timeline (weights, metrics,
evidence and verdict per step, decision) comes back as data.

Latency p95 is the upper bound of the histogram bucket holding it (no interpolation), so
the latency rule has a slack term: with coarse buckets a pure ratio would flap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from serving import canary_evidence as evidence
from serving.canary_evidence import Inconclusive, Probe, ProbeSet, probe_route
from serving.canary_records import CanaryConfig, CanaryResult, HealthVerdict, StepRecord
from serving.canary_steps import StepRunner
from serving.engine_metrics import EngineMetricsError, read_engine_metrics
from serving.gateway.client import BackendStats, GatewayAdmin
from serving.stack import engine_name

log = logging.getLogger(__name__)


class EngineFleet(Protocol):
    def start(self, name: str, model_dir: Path) -> str:
        """Start (or reuse) engine ``name`` for ``model_dir``; return its URL once healthy."""
        ...

    def stop(self, name: str) -> None: ...


class CanaryError(RuntimeError):
    """The rollout cannot start (for example one is already live on the route)."""


def check_canary_health(
    admin: GatewayAdmin, config: CanaryConfig, baseline: dict[str, BackendStats] | None = None
) -> HealthVerdict:
    """Fast breach check of the route's live canary, cheap enough for a sensor tick.

    ``baseline`` is a :meth:`GatewayAdmin.backend_stats` snapshot; errors are counted since it.
    """
    state = admin.state()
    route = state["routes"].get(config.route)
    canary = route and route.get("canary")
    if not canary:
        return HealthVerdict(True)
    if admin.fleet_breakers().get(canary) == "open":  # on any replica of the fleet
        return HealthVerdict(False, f"canary {canary} circuit breaker open")
    problem = _health_problem(state["backends"][canary]["url"])
    if problem is not None:
        return HealthVerdict(False, f"canary {canary} {problem}")
    try:  # the engine's own view, under vLLM's metric names (both engines export them)
        engine = read_engine_metrics(state["backends"][canary]["url"])
    except EngineMetricsError as exc:
        return HealthVerdict(False, f"canary {canary}: {exc}")
    if engine.waiting > config.max_engine_waiting:
        return HealthVerdict(
            False,
            f"canary {canary} queue vllm:num_requests_waiting={engine.waiting:.0f} over "
            f"{config.max_engine_waiting}",
        )
    now = admin.backend_stats(config.route).get(canary, BackendStats())
    window = now.minus((baseline or {}).get(canary, BackendStats()))
    if window.errors >= config.breach_min_errors and window.error_rate > config.max_error_rate:
        return HealthVerdict(
            False, f"canary error rate {window.error_rate:.1%} over {config.max_error_rate:.1%}"
        )
    return HealthVerdict(True)


def _health_problem(url: str, attempts: int = 2) -> str | None:
    """``None`` when ``/health`` answers 200 within ``attempts`` tries: one slow answer on a
    busy host is not a breach, two in a row are."""
    problem = None
    for _ in range(attempts):
        try:
            status = httpx.get(f"{url}/health", timeout=1.0).status_code
        except httpx.HTTPError as exc:
            problem = f"unreachable: {type(exc).__name__}"
            continue
        if status == 200:
            return None
        problem = f"/health answered {status}"
    return problem


def rollback(admin: GatewayAdmin, route: str, fleet: EngineFleet | None = None) -> str | None:
    """Send all traffic back to stable and retire the canary; returns the canary's name."""
    state = admin.state()
    current = state["routes"].get(route) or {}
    canary = current.get("canary")
    has_probe_route = probe_route(route) in state["routes"]
    if not canary:
        if has_probe_route:  # a rollout that died between its route writes
            admin.remove_route(probe_route(route))
        return None
    admin.set_weight(route, 0)  # first and alone: this is what stops user exposure
    if has_probe_route:
        admin.remove_route(probe_route(route))
    admin.put_route(route, current["stable"])
    admin.remove_backend(canary)
    if fleet is not None:
        fleet.stop(canary)
    return canary


def probe_accuracy(url: str, probes: Sequence[Probe], config: CanaryConfig) -> float:
    """Exact-match accuracy of greedy answers from the endpoint at ``url``."""
    return evidence.probe_accuracy(
        url, probes, config.route, config.probe_max_tokens, config.request_timeout_s
    )


@dataclass
class CanaryController:
    admin: GatewayAdmin
    fleet: EngineFleet
    config: CanaryConfig = field(default_factory=CanaryConfig)
    clock: Callable[[], float] = time.monotonic
    # the rollout in progress: ``promote`` reads its timeline as the evidence of the move
    current: CanaryResult | None = field(default=None, init=False, repr=False)

    def run(
        self,
        challenger_dir: Path,
        probes: Sequence[Probe] | ProbeSet,
        promote: Callable[[], None],
        on_rollback: Callable[[str], None] | None = None,
    ) -> CanaryResult:
        """Roll ``challenger_dir`` out; ``on_rollback(reason)`` runs on a verdict against the
        model (not on ``inconclusive``, which says nothing about it)."""
        cfg = self.config
        probe_set = probes if isinstance(probes, ProbeSet) else ProbeSet(tuple(probes))
        state = self.admin.state()
        route = state["routes"].get(cfg.route)
        if route is None:
            raise CanaryError(f"route {cfg.route!r} has no stable backend; run `serving up` first")
        if route.get("canary"):
            raise CanaryError(
                f"a canary ({route['canary']}) is already live on {cfg.route!r}; "
                "roll it back or finish it first"
            )
        stable = route["stable"]
        canary = engine_name(challenger_dir)
        if canary == stable:
            raise CanaryError(f"challenger {challenger_dir} is already the stable model")
        timeline: list[StepRecord] = []
        result = self.current = CanaryResult("rolled_back", None, canary, stable, timeline)

        url = self.fleet.start(canary, challenger_dir)
        # model named explicitly: the probe route rewrites requests to the engine's name
        self.admin.put_backend(canary, url, timeout_s=cfg.request_timeout_s, model=cfg.route)
        self.admin.put_route(cfg.route, stable, canary, 0)
        self.admin.put_route(probe_route(cfg.route), canary)
        run = StepRunner(
            cfg,
            self.admin,
            self.clock,
            check_canary_health,
            probe_set,
            state["backends"][stable]["url"],
            stable,
            canary,
            url,
        )

        for weight in (0.0, *cfg.steps):
            step = StepRecord(weight, time.time())
            timeline.append(step)
            try:
                reason = run.step(step)
            except Inconclusive as exc:
                step.ended_at, step.verdict, step.reason = time.time(), "inconclusive", str(exc)
                return self._inconclusive(result, f"step {weight:g}%: {exc}")
            step.ended_at, step.passed, step.reason = time.time(), reason is None, reason
            step.verdict = step.verdict or ("pass" if reason is None else "fail")
            if reason is not None:
                return self._roll_back(result, f"step {weight:g}%: {reason}", on_rollback)
        try:
            promote()
        except Exception as exc:  # registry and serving must agree: no promotion, no switch
            return self._roll_back(result, f"promote callback failed: {exc}", on_rollback)
        self.admin.remove_route(probe_route(cfg.route))
        self.admin.put_route(cfg.route, canary)
        self.admin.remove_backend(stable)
        self.fleet.stop(stable)
        result.decision = "promoted"
        log.info("canary %s promoted on %s", canary, cfg.route)
        return result

    def _roll_back(
        self, result: CanaryResult, reason: str, on_rollback: Callable[[str], None] | None
    ) -> CanaryResult:
        log.warning("rolling back canary %s: %s", result.canary_backend, reason)
        rollback(self.admin, self.config.route, self.fleet)
        result.reason = reason
        if on_rollback is not None:
            on_rollback(reason)
        return result

    def _inconclusive(self, result: CanaryResult, reason: str) -> CanaryResult:
        log.warning(
            "canary %s inconclusive, traffic back on stable: %s", result.canary_backend, reason
        )
        rollback(self.admin, self.config.route, self.fleet)
        result.decision, result.reason = "inconclusive", reason
        return result
