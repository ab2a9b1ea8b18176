"""Canary rollout of a challenger model behind the gateway, with automated rollback.

Domain logic only (no Dagster): the orchestration layer supplies the registry actions as
callables (``promote``; ``on_rollback`` to record the reason) and the engine fleet.

The rollout: start an engine for the challenger dir, register it as the route's canary at
weight 0, run the probe set against it (a challenger that cannot answer never sees a user),
then step the weight (default 10 -> 25 -> 50 -> 100). Each step holds for ``window_s``;
every ``poll_s`` :func:`check_canary_health` looks for a breach (canary breaker open, canary
``/health`` failing, canary error rate over the limit), and a breach rolls back at once. At
the end of a window the step is analysed canary vs stable from the gateway's own metrics
(per-backend error rate and p95 latency over the window) plus the probe set's exact-match
accuracy. All steps pass -> ``promote()``, the canary becomes the stable backend and the old
engine stops. Any failure -> weight 0, canary removed and stopped, reason returned. The
timeline (weights, metrics per step, decision) comes back as data.

Latency p95 is the upper bound of the histogram bucket holding it (no interpolation), so
the latency rule has a slack term: with coarse buckets a pure ratio would flap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from serving.engine_metrics import EngineMetricsError, read_engine_metrics
from serving.gateway.client import BackendStats, GatewayAdmin
from serving.stack import ROUTE, engine_name

log = logging.getLogger(__name__)


class EngineFleet(Protocol):
    def start(self, name: str, model_dir: Path) -> str:
        """Start (or reuse) engine ``name`` for ``model_dir``; return its URL once healthy."""
        ...

    def stop(self, name: str) -> None: ...


class CanaryError(RuntimeError):
    """The rollout cannot start (for example one is already live on the route)."""


@dataclass(frozen=True)
class Probe:
    prompt: str
    expected: str


@dataclass(frozen=True)
class CanaryConfig:
    steps: tuple[float, ...] = (10.0, 25.0, 50.0, 100.0)
    window_s: float = 60.0
    poll_s: float = 0.5
    max_error_rate: float = 0.05
    max_p95_ratio: float = 2.0
    p95_slack_s: float = 0.1
    min_probe_accuracy: float = 0.8
    max_accuracy_drop: float = 0.0  # canary accuracy may trail stable's by at most this
    breach_min_errors: int = 3  # fewer canary errors than this never triggers a fast rollback
    probe_max_tokens: int = 16
    max_engine_waiting: int = 256  # canary's own queue (vllm:num_requests_waiting) limit
    request_timeout_s: float = 30.0
    route: str = ROUTE

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < w <= 100 for w in self.steps):
            raise ValueError(f"steps must be weights in (0, 100], got {self.steps}")
        if list(self.steps) != sorted(self.steps) or self.steps[-1] != 100:
            raise ValueError(f"steps must increase and end at 100, got {self.steps}")
        if self.window_s <= 0 or self.poll_s <= 0:
            raise ValueError(f"window_s and poll_s must be > 0, got {self.window_s}, {self.poll_s}")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")


@dataclass
class StepRecord:
    weight: float
    started_at: float
    ended_at: float = 0.0
    canary: dict = field(default_factory=dict)
    stable: dict = field(default_factory=dict)
    probe_accuracy: float | None = None
    stable_probe_accuracy: float | None = None
    passed: bool = False
    reason: str | None = None


@dataclass
class CanaryResult:
    decision: str  # "promoted" | "rolled_back"
    reason: str | None
    canary_backend: str
    stable_backend: str
    timeline: list[StepRecord]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HealthVerdict:
    healthy: bool
    reason: str | None = None


def _summary(stats: BackendStats) -> dict:
    return {
        "requests": stats.requests,
        "errors": stats.errors,
        "error_rate": stats.error_rate,
        "p95_s": stats.quantile(0.95),
    }


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
    if state["breakers"].get(canary) == "open":
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
    if not canary:
        return None
    admin.set_weight(route, 0)  # first and alone: this is what stops user exposure
    admin.put_route(route, current["stable"])
    admin.remove_backend(canary)
    if fleet is not None:
        fleet.stop(canary)
    return canary


def probe_accuracy(url: str, probes: Sequence[Probe], config: CanaryConfig) -> float:
    """Exact-match accuracy of greedy answers from the engine at ``url``."""
    if not probes:
        return 1.0
    correct = 0
    with httpx.Client(timeout=config.request_timeout_s) as client:
        for probe in probes:
            body = {
                "model": config.route,
                "prompt": probe.prompt,
                "temperature": 0,
                "max_tokens": config.probe_max_tokens,
                "stop": ["\n"],
            }
            for attempt in range(3):
                try:
                    response = client.post(f"{url}/v1/completions", json=body)
                    response.raise_for_status()
                    break
                except httpx.HTTPError:
                    if attempt == 2:
                        raise
                    time.sleep(0.5)
            answer = response.json()["choices"][0]["text"].strip()
            correct += answer == probe.expected
    return correct / len(probes)


@dataclass
class CanaryController:
    admin: GatewayAdmin
    fleet: EngineFleet
    config: CanaryConfig = field(default_factory=CanaryConfig)
    clock: Callable[[], float] = time.monotonic

    def run(
        self,
        challenger_dir: Path,
        probes: Sequence[Probe],
        promote: Callable[[], None],
        on_rollback: Callable[[str], None] | None = None,
    ) -> CanaryResult:
        cfg = self.config
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
        result = CanaryResult("rolled_back", None, canary, stable, timeline)

        url = self.fleet.start(canary, challenger_dir)
        self.admin.put_backend(canary, url, timeout_s=cfg.request_timeout_s)
        self.admin.put_route(cfg.route, stable, canary, 0)
        stable_url = state["backends"][stable]["url"]

        for weight in (0.0, *cfg.steps):
            step = StepRecord(weight, time.time())
            timeline.append(step)
            reason = self._step(step, url, stable_url, probes, stable, canary)
            step.ended_at, step.passed, step.reason = time.time(), reason is None, reason
            if reason is not None:
                return self._roll_back(result, f"step {weight:g}%: {reason}", on_rollback)
        try:
            promote()
        except Exception as exc:  # registry and serving must agree: no promotion, no switch
            return self._roll_back(result, f"promote callback failed: {exc}", on_rollback)
        self.admin.put_route(cfg.route, canary)
        self.admin.remove_backend(stable)
        self.fleet.stop(stable)
        result.decision = "promoted"
        log.info("canary %s promoted on %s", canary, cfg.route)
        return result

    def _step(
        self,
        step: StepRecord,
        url: str,
        stable_url: str,
        probes: Sequence[Probe],
        stable: str,
        canary: str,
    ) -> str | None:
        cfg = self.config
        if step.weight == 0:  # pre-traffic gate: quality only
            return self._quality(step, url, stable_url, probes)
        self.admin.set_weight(cfg.route, step.weight)
        baseline = self.admin.backend_stats(cfg.route)
        try:
            engine_before = read_engine_metrics(url)
        except EngineMetricsError as exc:
            return f"canary engine: {exc}"
        deadline = self.clock() + cfg.window_s
        while self.clock() < deadline:
            time.sleep(min(cfg.poll_s, max(0.0, deadline - self.clock())))
            verdict = check_canary_health(self.admin, cfg, baseline)
            if not verdict.healthy:
                return verdict.reason
        now = self.admin.backend_stats(cfg.route)
        c = now.get(canary, BackendStats()).minus(baseline.get(canary, BackendStats()))
        s = now.get(stable, BackendStats()).minus(baseline.get(stable, BackendStats()))
        step.canary, step.stable = _summary(c), _summary(s)
        try:
            step.canary.update(read_engine_metrics(url).since(engine_before).summary())
        except EngineMetricsError as exc:
            return f"canary engine: {exc}"
        if c.error_rate > cfg.max_error_rate:
            return f"canary error rate {c.error_rate:.1%} over {cfg.max_error_rate:.1%}"
        c95, s95 = c.quantile(0.95), s.quantile(0.95)
        if c95 is not None and s95 is not None and c95 > s95 * cfg.max_p95_ratio + cfg.p95_slack_s:
            return f"canary p95 {c95:.3f}s vs stable {s95:.3f}s"
        return self._quality(step, url, stable_url, probes)

    def _quality(
        self, step: StepRecord, url: str, stable_url: str, probes: Sequence[Probe]
    ) -> str | None:
        cfg = self.config
        try:
            step.probe_accuracy = probe_accuracy(url, probes, cfg)
        except httpx.HTTPError as exc:
            return f"probes failed on canary: {exc}"
        try:
            step.stable_probe_accuracy = probe_accuracy(stable_url, probes, cfg)
        except httpx.HTTPError:
            step.stable_probe_accuracy = None  # a degraded stable must not block a fix
        if step.probe_accuracy < cfg.min_probe_accuracy:
            return f"probe accuracy {step.probe_accuracy:.0%} under {cfg.min_probe_accuracy:.0%}"
        floor = (step.stable_probe_accuracy or 0.0) - cfg.max_accuracy_drop
        if step.probe_accuracy < floor:
            return f"probe accuracy {step.probe_accuracy:.0%} under stable's {floor:.0%}"
        return None

    def _roll_back(
        self, result: CanaryResult, reason: str, on_rollback: Callable[[str], None] | None
    ) -> CanaryResult:
        log.warning("rolling back canary %s: %s", result.canary_backend, reason)
        rollback(self.admin, self.config.route, self.fleet)
        result.reason = reason
        if on_rollback is not None:
            on_rollback(reason)
        return result
