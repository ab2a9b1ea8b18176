"""The circuit breaker shared by the gateway's local backends and partner health.

One small state machine: closed until ``threshold`` consecutive failures, then open for
``cooldown_s``, then half-open with a single probe slot; the probe's outcome closes or
re-opens it. The clock is injectable, so partner health tests its rules without sleeping.
It lives outside ``serving.gateway`` and ``serving.partners`` so both use it without
importing each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass
class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; lets one probe through after
    ``cooldown_s``; a successful probe closes it, a failed one re-opens it."""

    threshold: int = 3
    cooldown_s: float = 5.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def allow(self) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.clock() - self.opened_at < self.cooldown_s:
                return False
            self.state = BreakerState.HALF_OPEN
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.state, self.failures, self.probing = BreakerState.CLOSED, 0, False

    def failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state, self.opened_at, self.probing = BreakerState.OPEN, self.clock(), False
