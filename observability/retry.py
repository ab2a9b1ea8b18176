"""Bounded retry with backoff: the one loop every external call of the product goes through.

A call is retried only while ``retry_on`` says its exception is transient and attempts are
left; between attempts it sleeps ``delay_s(i)`` after the i-th failure (0-based), never
after the last one. When the attempts run out, or the error is not transient, the last
exception propagates unchanged, so each caller keeps its own error type and message.
A caller that retries on a status code rather than an exception raises one from ``fn``.

Each call keeps its own timeout (passed to its client); this module only counts attempts
and waits. ``sleep`` is injectable so the rules are tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def exponential(base_s: float, cap_s: float = float("inf")) -> Callable[[int], float]:
    """``base_s``, twice that, four times that... after each failure, at most ``cap_s``."""
    return lambda failure: min(base_s * 2**failure, cap_s)


def linear(step_s: float) -> Callable[[int], float]:
    """``step_s``, twice that, three times that... after each failure."""
    return lambda failure: step_s * (failure + 1)


def retry_call(
    fn: Callable[[], T],
    *,
    attempts: int,
    delay_s: Callable[[int], float],
    retry_on: Callable[[BaseException], bool],
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, tried at most ``attempts`` times. ``on_retry(attempt, exc, delay)`` (attempt
    1-based) runs before each wait, to log it."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for failure in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if failure + 1 >= attempts or not retry_on(exc):
                raise
            delay = delay_s(failure)
            if on_retry is not None:
                on_retry(failure + 1, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")
