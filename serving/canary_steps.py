"""One canary rollout's steps: traffic, evidence and quality, judged against one stable model.

:class:`StepRunner` is the part of :class:`serving.canary.CanaryController` that decides a
step; the controller owns the rollout around it (engine, routes, promotion, rollback). A
step at weight 0 is the pre-traffic quality gate (probes only). A traffic step sets the
weight, watches the canary's health for the window, then gathers its evidence
(``canary_evidence.py``): the canary's user requests from the gateway's per-route
metrics, the quality probes, and probe top-ups up to ``min_requests``; with no probes it
holds up to ``max_hold_s`` for user traffic instead. Stable's probe answers are measured
once per rollout, directly on its engine: it does not change while the canary rolls out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from serving.canary_evidence import (
    Evidence,
    Inconclusive,
    ProbeClient,
    ProbeSet,
    compare_likelihood,
    probe_accuracy,
    probe_route,
    summary,
    text_nlls,
)
from serving.canary_records import CanaryConfig, HealthVerdict, StepRecord
from serving.engine_metrics import EngineMetricsError, read_engine_metrics
from serving.gateway.client import BackendStats, GatewayAdmin

_PROBE_ERRORS = (httpx.HTTPError, ValueError, KeyError)


@dataclass
class StepRunner:
    cfg: CanaryConfig
    admin: GatewayAdmin
    clock: Callable[[], float]
    health: Callable[[GatewayAdmin, CanaryConfig, dict], HealthVerdict]
    probes: ProbeSet
    stable_url: str
    stable: str
    canary: str
    canary_url: str
    _stable_accuracy: float | None = None
    _stable_nlls: list[float] | None = None
    _next_topup: int = 0

    def _stats(self, route: str) -> tuple[BackendStats, BackendStats]:
        now = self.admin.backend_stats(route)
        return now.get(self.canary, BackendStats()), now.get(self.stable, BackendStats())

    def step(self, step: StepRecord) -> str | None:
        """``None`` when the step passes, the reason when it fails; raises
        :class:`Inconclusive` when the evidence cannot tell."""
        cfg, admin = self.cfg, self.admin
        gateway_probe = probe_route(cfg.route)
        if step.weight == 0:  # pre-traffic gate: probes only, no user sees the canary yet
            before, _ = self._stats(gateway_probe)
            reason = self._quality(step)
            after, _ = self._stats(gateway_probe)
            probed = after.minus(before)
            step.evidence = Evidence(0, 0, int(probed.requests), int(probed.errors), 0).to_dict()
            if not len(self.probes):
                step.verdict = "skipped"
            return reason
        admin.set_weight(cfg.route, step.weight)
        user0, stable0 = self._stats(cfg.route)
        probe0, _ = self._stats(gateway_probe)
        try:  # the engine's own counters, under vLLM's names (both engines export them)
            engine0 = read_engine_metrics(self.canary_url)
        except EngineMetricsError as exc:
            return f"canary engine: {exc}"
        reason = self._watch(cfg.window_s)
        if reason is not None:
            return reason
        held = 0.0
        if not len(self.probes):  # nothing to probe with: wait for users instead
            started = self.clock()
            while self.clock() - started < cfg.max_hold_s:
                user, _ = self._stats(cfg.route)
                if user.minus(user0).requests >= cfg.min_requests:
                    break
                reason = self._watch(min(cfg.poll_s * 4, cfg.max_hold_s))
                if reason is not None:
                    return reason
            held = self.clock() - started
        user, stable = self._stats(cfg.route)
        c, s = user.minus(user0), stable.minus(stable0)
        step.canary, step.stable = summary(c), summary(s)
        try:
            step.canary.update(read_engine_metrics(self.canary_url).since(engine0).summary())
        except EngineMetricsError as exc:
            return f"canary engine: {exc}"
        reason = self._quality(step)
        if reason is None:
            self._top_up(int(cfg.min_requests - c.requests - self._probed(probe0).requests))
        probed = self._probed(probe0)
        evidence = Evidence(
            int(c.requests),
            int(c.errors),
            int(probed.requests),
            int(probed.errors),
            cfg.min_requests,
            round(held, 3),
        )
        step.evidence = evidence.to_dict()
        if evidence.errors and evidence.error_rate > cfg.max_error_rate:
            return (
                f"canary error rate {evidence.error_rate:.1%} over {cfg.max_error_rate:.1%} "
                f"({evidence.errors} of {evidence.requests} requests, {evidence.source})"
            )
        if reason is not None:
            return reason
        c95, s95 = c.quantile(0.95), s.quantile(0.95)
        if c95 is not None and s95 is not None and c95 > s95 * cfg.max_p95_ratio + cfg.p95_slack_s:
            return f"canary p95 {c95:.3f}s vs stable {s95:.3f}s"
        if not evidence.sufficient:
            raise Inconclusive(
                f"{evidence.requests} canary requests ({evidence.user_requests} user, "
                f"{evidence.probe_requests} probe) under the {cfg.min_requests} a step needs; "
                "send traffic, provide held-out probes, or raise max_hold_s"
            )
        return None

    def _probed(self, before: BackendStats) -> BackendStats:
        now, _ = self._stats(probe_route(self.cfg.route))
        return now.minus(before)

    def _watch(self, seconds: float) -> str | None:
        """Poll the canary's health for ``seconds``; the breach's reason, if any."""
        cfg = self.cfg
        baseline = self.admin.backend_stats(cfg.route)
        deadline = self.clock() + seconds
        while self.clock() < deadline:
            time.sleep(min(cfg.poll_s, max(0.0, deadline - self.clock())))
            verdict = self.health(self.admin, cfg, baseline)
            if not verdict.healthy:
                return verdict.reason
        return None

    def _top_up(self, missing: int) -> None:
        """Send ``missing`` more probe requests to the canary (texts first: scoring is cheap).
        Failures are not raised: the gateway counts them, and the evidence judges them."""
        if missing <= 0 or not len(self.probes):
            return
        cfg = self.cfg
        client = ProbeClient(self.admin.url, probe_route(cfg.route), cfg.request_timeout_s, 1)
        texts, tasks = self.probes.texts, self.probes.tasks
        try:
            for _ in range(missing):
                i, self._next_topup = self._next_topup, self._next_topup + 1
                try:
                    if texts:
                        client.nll(texts[i % len(texts)])
                    else:
                        client.answer(tasks[i % len(tasks)], cfg.probe_max_tokens)
                except _PROBE_ERRORS:
                    continue
        finally:
            client.close()

    def _quality(self, step: StepRecord) -> str | None:
        cfg, tasks, texts = self.cfg, self.probes.tasks, self.probes.texts
        gateway = self.admin.url
        via = probe_route(cfg.route)
        try:
            if tasks:
                step.probe_accuracy = probe_accuracy(
                    gateway, tasks, via, cfg.probe_max_tokens, cfg.request_timeout_s
                )
            canary_nlls = text_nlls(gateway, texts, via, cfg.request_timeout_s) if texts else []
        except _PROBE_ERRORS as exc:
            return f"probes failed on canary: {exc}"
        # a degraded stable must not block a fix: without its answers, no comparison
        if self._stable_accuracy is None and tasks:
            with contextlib.suppress(*_PROBE_ERRORS):
                self._stable_accuracy = probe_accuracy(
                    self.stable_url, tasks, cfg.route, cfg.probe_max_tokens, cfg.request_timeout_s
                )
        if self._stable_nlls is None and texts:
            with contextlib.suppress(*_PROBE_ERRORS):
                self._stable_nlls = text_nlls(
                    self.stable_url, texts, cfg.route, cfg.request_timeout_s
                )
        step.stable_probe_accuracy = self._stable_accuracy
        if tasks:
            if step.probe_accuracy < cfg.min_probe_accuracy:
                return (
                    f"probe accuracy {step.probe_accuracy:.0%} under {cfg.min_probe_accuracy:.0%}"
                )
            floor = (self._stable_accuracy or 0.0) - cfg.max_accuracy_drop
            if step.probe_accuracy < floor:
                return f"probe accuracy {step.probe_accuracy:.0%} under stable's {floor:.0%}"
        if texts and self._stable_nlls is not None:
            comparison = compare_likelihood(
                canary_nlls,
                self._stable_nlls,
                cfg.max_nll_increase,
                cfg.likelihood_confidence,
                cfg.min_text_probes,
            )
            step.likelihood = comparison.to_dict()
            if comparison.verdict == "fail":
                return (
                    f"held-out text likelihood: canary {comparison.canary_nll:.3f} vs stable "
                    f"{comparison.stable_nll:.3f} nats/token over {comparison.texts} texts "
                    f"(difference at least {comparison.lower:.3f}, margin {cfg.max_nll_increase})"
                )
            # With task probes the tasks decide (as the gate's suites do): likelihood then only
            # vetoes a clear regression, and an undecided comparison does not hold the step.
            if comparison.verdict == "inconclusive" and not tasks:
                raise Inconclusive(
                    f"held-out text likelihood cannot tell canary from stable: difference "
                    f"{comparison.mean_diff:.3f} nats/token, interval [{comparison.lower:.3f}, "
                    f"{comparison.upper:.3f}] over {comparison.texts} texts, margin "
                    f"{cfg.max_nll_increase}"
                )
        return None
