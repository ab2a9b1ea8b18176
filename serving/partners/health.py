"""Per-partner health: passive evidence, active probes, hysteresis, breaker and Retry-After.

Every attempt the gateway sends to a partner, and every active probe, ends in an *outcome*
(success with its latency, or a failure kind) that :class:`PartnerHealth` records. From
them it keeps a sliding window (the last ``window_s`` seconds, at most ``window_max``
outcomes) with error rate, timeouts and latency p50/p95, a :class:`CircuitBreaker` fed by
consecutive failures, and a state:

* ``healthy`` -> ``down`` when the breaker opens (``breaker_threshold`` consecutive
  failures: a partner that refuses connections, hangs or answers 5xx is gone within a few
  requests);
* ``healthy`` -> ``degraded`` when the window holds at least ``min_window`` outcomes and
  their error rate reaches ``degraded_error_rate``, or their p95 latency reaches
  ``slow_p95_s``: one error never degrades a partner, a pattern does;
* ``degraded`` -> ``down`` when the breaker opens;
* ``degraded``/``down`` -> ``healthy`` only after ``recover_successes`` consecutive successes
  *and* a dwell time in the bad state, so a partner that answers one probe between failures
  does not flap back. The dwell starts at ``min_dwell_s`` and doubles (up to
  ``max_dwell_s``) each time the partner falls back into a bad state within ``window_s`` of
  recovering: cheap probes can pass while real traffic is still too slow, and each such
  relapse costs a few live requests, so repeated relapses are spaced further apart. The
  window is cleared on recovery: the old evidence was already acted on.

Only a healthy partner takes live traffic. Recovery evidence comes from the active probes;
while the breaker is open a probe waits for the breaker's cooldown and takes its half-open
slot. A partner with probes disabled gets one live trial request per cooldown instead.

A 429 sets ``retry_after_until`` (``Retry-After`` in seconds or as an HTTP date, else
``default_retry_after_s``): nothing, probes included, is sent before it passes. It counts in
the window's error rate but not against the breaker: the partner is alive, only busy. After
a 429, live traffic waits for a probe to succeed (a partner with probes disabled gets one
live trial instead), so a partner that keeps refusing costs no user a wasted round trip.
Consecutive 429s back off beyond ``Retry-After`` (it doubles with each one, up to
``max_retry_after_s``), and ``rate_limit_threshold`` of them in a row mark the partner
``degraded`` (rate limited), which ``partner_health_sensor`` sees; it recovers as any
degraded partner does, on consecutive successful probes and the dwell time.

A hung partner must not blind the gateway for a whole request timeout, so an attempt has a
time-to-first-token deadline (:meth:`PartnerHealth.first_token_deadline`): ``ttft_factor``
times the window's p95, at least ``ttft_floor_s``, at most the partner's timeout. A partner
that accepts connections and then says nothing times out on that deadline, the breaker
opens after ``breaker_threshold`` of them, and the requests are retried on the next choice.
The cost: an answer slower than the deadline is abandoned and served elsewhere.

Pure logic: the clocks are injected (``clock`` monotonic for durations, ``wall`` for the
unix times shown to operators), so every rule is unit-tested without sleeping.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from serving.breaker import BreakerState, CircuitBreaker

log = logging.getLogger(__name__)


class PartnerState(IntEnum):
    HEALTHY = 0
    DEGRADED = 1
    DOWN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


RATE_LIMITED = "status_429"
TIMEOUT = "timeout"
TRANSITIONS_KEPT = 50


@dataclass(frozen=True)
class HealthPolicy:
    window_s: float = 30.0
    window_max: int = 100
    min_window: int = 5
    degraded_error_rate: float = 0.25
    slow_p95_s: float = 10.0
    breaker_threshold: int = 3
    breaker_cooldown_s: float = 2.0
    recover_successes: int = 3
    min_dwell_s: float = 5.0
    max_dwell_s: float = 120.0
    default_retry_after_s: float = 5.0
    max_retry_after_s: float = 300.0
    rate_limit_threshold: int = 2  # consecutive 429s that mark the partner degraded
    ttft_floor_s: float = 1.0
    ttft_factor: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.degraded_error_rate <= 1:
            raise ValueError(
                f"degraded_error_rate must be in (0, 1], got {self.degraded_error_rate}"
            )
        for name in (
            "breaker_threshold",
            "recover_successes",
            "min_window",
            "window_max",
            "rate_limit_threshold",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("window_s", "slow_p95_s", "ttft_floor_s", "ttft_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Outcome:
    at: float
    ok: bool
    kind: str  # "ok" or the failure kind (timeout, connect, status_5xx, malformed, ...)
    latency_s: float | None


@dataclass(frozen=True)
class Transition:
    at: float
    from_state: PartnerState
    to_state: PartnerState
    reason: str

    def to_dict(self) -> dict:
        return {
            "at": self.at,
            "from": self.from_state.label,
            "to": self.to_state.label,
            "reason": self.reason,
        }


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_wall)


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1)]


@dataclass
class PartnerHealth:
    name: str = "partner"
    policy: HealthPolicy = field(default_factory=HealthPolicy)
    probes_enabled: bool = True
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    state: PartnerState = PartnerState.HEALTHY
    reason: str = "registered"

    def __post_init__(self) -> None:
        self.breaker = CircuitBreaker(
            self.policy.breaker_threshold, self.policy.breaker_cooldown_s, clock=self.clock
        )
        self.window: deque[Outcome] = deque(maxlen=self.policy.window_max)
        self.transitions: deque[Transition] = deque(maxlen=TRANSITIONS_KEPT)
        self.transition_counts: dict[tuple[str, str], int] = {}
        self.since_mono = self.clock()
        self.since = self.wall()
        self.consecutive_ok = 0
        self.consecutive_429 = 0
        self.retry_after_mono = 0.0
        self.retry_after_wall: float | None = None
        self.last_probe_mono: float | None = None
        self.last_probe_at: float | None = None
        self.last_probe_ok: bool | None = None
        self.last_trial_mono = -math.inf
        self.dwell_s = self.policy.min_dwell_s
        self.recovered_mono = -math.inf

    # -- what the router asks -------------------------------------------------------------

    def available(self) -> bool:
        """May a live request go to this partner now?"""
        now = self.clock()
        if now < self.retry_after_mono:
            return False
        if self.state is PartnerState.HEALTHY and not self.consecutive_429:
            return self.breaker.state is BreakerState.CLOSED
        if self.probes_enabled or now - self.last_trial_mono < self.policy.breaker_cooldown_s:
            return False
        if not self.breaker.allow():
            return False
        self.last_trial_mono = now
        return True

    def probe_due(self, interval_s: float) -> bool:
        """Is an active probe due now? Takes the breaker's half-open slot while it is open."""
        if interval_s <= 0:
            return False
        now = self.clock()
        if now < self.retry_after_mono:
            return False
        if self.last_probe_mono is not None and now - self.last_probe_mono < interval_s:
            return False
        if self.breaker.state is not BreakerState.CLOSED and not self.breaker.allow():
            return False
        self.last_probe_mono = now
        return True

    def first_token_deadline(self, timeout_s: float) -> float:
        p95 = self._latency_quantile(0.95)
        deadline = self.policy.ttft_floor_s
        if p95 is not None:
            deadline = max(deadline, self.policy.ttft_factor * p95)
        return min(deadline, timeout_s)

    # -- what the router tells ------------------------------------------------------------

    def success(self, latency_s: float | None, probe: bool = False) -> None:
        """``latency_s`` of a live answer; None for a probe, whose one-token answer would make
        the partner look faster than it is."""
        self._note_probe(probe, True)
        self._add(Outcome(self.clock(), True, "ok", latency_s))
        self.consecutive_ok += 1
        self.consecutive_429 = 0
        self.breaker.success()
        self.evaluate()

    def failure(self, kind: str, probe: bool = False) -> None:
        self._note_probe(probe, False)
        self._add(Outcome(self.clock(), False, kind, None))
        self.consecutive_ok = 0
        if kind != RATE_LIMITED:
            self.consecutive_429 = 0
            self.breaker.failure()
        self.evaluate()

    def rate_limited(self, retry_after_s: float | None, probe: bool = False) -> None:
        delay = self.policy.default_retry_after_s if retry_after_s is None else retry_after_s
        self.consecutive_429 += 1
        # a partner that keeps refusing is asked less and less often, beyond its Retry-After
        delay = min(delay * 2 ** (self.consecutive_429 - 1), self.policy.max_retry_after_s)
        self.retry_after_mono = max(self.retry_after_mono, self.clock() + delay)
        self.retry_after_wall = self.wall() + (self.retry_after_mono - self.clock())
        self.failure(RATE_LIMITED, probe)

    def evaluate(self) -> None:
        """Apply the state rules to the evidence so far (also called on a timer, so dwell
        times elapse without new traffic)."""
        if self.breaker.state is BreakerState.OPEN and self.state is not PartnerState.DOWN:
            last = self.window[-1].kind if self.window else "unknown"
            self._move(
                PartnerState.DOWN,
                f"circuit opened after {self.policy.breaker_threshold} consecutive failures"
                f" (last: {last})",
            )
        elif self.state is PartnerState.HEALTHY:
            degraded = self._rate_limited() or self._degradation()
            if degraded:
                self._move(PartnerState.DEGRADED, degraded)
        elif (
            self.consecutive_ok >= self.policy.recover_successes
            and self.clock() - self.since_mono >= self.dwell_s
        ):
            self._move(
                PartnerState.HEALTHY,
                f"{self.consecutive_ok} consecutive successes after"
                f" {self.clock() - self.since_mono:.1f} s {self.state.label}",
            )
            self.window.clear()
            self.recovered_mono = self.clock()

    # -- reporting ------------------------------------------------------------------------

    def stats(self) -> dict:
        outcomes = self._recent()
        failures = sum(not o.ok for o in outcomes)
        return {
            "window_requests": len(outcomes),
            "error_rate": round(failures / len(outcomes), 4) if outcomes else 0.0,
            "timeouts": sum(o.kind == TIMEOUT for o in outcomes),
            "p50_s": self._latency_quantile(0.5),
            "p95_s": self._latency_quantile(0.95),
            "last_probe_ok": self.last_probe_ok,
            "last_probe_at": self.last_probe_at,
        }

    def status(self) -> dict:
        pending = self.retry_after_wall if self.clock() < self.retry_after_mono else None
        return {
            "state": self.state.label,
            "since": self.since,
            "reason": self.reason,
            "breaker": self.breaker.state.name.lower(),
            "retry_after_until": pending,
            "stats": self.stats(),
            "transitions": [t.to_dict() for t in self.transitions],
        }

    # -- internals ------------------------------------------------------------------------

    def _rate_limited(self) -> str | None:
        if self.consecutive_429 < self.policy.rate_limit_threshold:
            return None
        backoff = self.retry_after_mono - self.clock()
        return (
            f"rate limited: {self.consecutive_429} consecutive 429s (backing off {backoff:.0f} s)"
        )

    def _degradation(self) -> str | None:
        outcomes = self._recent()
        if len(outcomes) < self.policy.min_window:
            return None
        failures = [o for o in outcomes if not o.ok]
        rate = len(failures) / len(outcomes)
        if rate >= self.policy.degraded_error_rate:
            kinds = sorted({o.kind for o in failures})
            return (
                f"error rate {rate:.0%} over the last {len(outcomes)} requests ({', '.join(kinds)})"
            )
        p95 = self._latency_quantile(0.95)
        if p95 is not None and p95 >= self.policy.slow_p95_s:
            return f"p95 latency {p95:.2f} s >= {self.policy.slow_p95_s:.2f} s"
        return None

    def _recent(self) -> list[Outcome]:
        horizon = self.clock() - self.policy.window_s
        while self.window and self.window[0].at < horizon:
            self.window.popleft()
        return list(self.window)

    def _latency_quantile(self, q: float) -> float | None:
        latencies = sorted(o.latency_s for o in self._recent() if o.latency_s is not None)
        return _quantile(latencies, q)

    def _add(self, outcome: Outcome) -> None:
        self.window.append(outcome)

    def _note_probe(self, probe: bool, ok: bool) -> None:
        if probe:
            self.last_probe_ok, self.last_probe_at = ok, self.wall()

    def _move(self, to: PartnerState, reason: str) -> None:
        if self.state is PartnerState.HEALTHY:
            relapse = self.clock() - self.recovered_mono < self.policy.window_s
            self.dwell_s = (
                min(2 * self.dwell_s, self.policy.max_dwell_s)
                if relapse
                else self.policy.min_dwell_s
            )
            if relapse:
                reason += f" (relapse: {self.dwell_s:.0f} s before it may recover)"
        transition = Transition(self.wall(), self.state, to, reason)
        self.transitions.append(transition)
        key = (self.state.label, to.label)
        self.transition_counts[key] = self.transition_counts.get(key, 0) + 1
        log.warning("partner %s: %s -> %s: %s", self.name, self.state.label, to.label, reason)
        self.state, self.reason = to, reason
        self.since, self.since_mono = transition.at, self.clock()
        self.consecutive_ok = 0
