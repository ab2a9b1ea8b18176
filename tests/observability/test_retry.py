"""Contract: ``retry_call`` tries a call at most ``attempts`` times, only while its error is
transient, waits the backoff between attempts (never after the last), and lets the last
error through unchanged."""

from __future__ import annotations

import pytest

from observability.retry import exponential, linear, retry_call


class Flaky:
    """Fails with ``errors`` in order, then returns ``"ok"``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_transient_errors_are_retried_with_backoff_until_success() -> None:
    waits: list[float] = []
    logged: list[tuple[int, str, float]] = []
    call = Flaky(TimeoutError("t1"), ConnectionError("c2"))
    result = retry_call(
        call,
        attempts=3,
        delay_s=exponential(0.5),
        retry_on=lambda exc: isinstance(exc, OSError),
        on_retry=lambda attempt, exc, delay: logged.append((attempt, str(exc), delay)),
        sleep=waits.append,
    )
    assert result == "ok" and call.calls == 3
    assert waits == [0.5, 1.0]
    assert logged == [(1, "t1", 0.5), (2, "c2", 1.0)]


def test_attempts_are_bounded_and_the_last_error_comes_through() -> None:
    waits: list[float] = []
    last = TimeoutError("third")
    call = Flaky(TimeoutError("first"), TimeoutError("second"), last)
    with pytest.raises(TimeoutError) as raised:
        retry_call(
            call, attempts=3, delay_s=linear(1.0), retry_on=lambda e: True, sleep=waits.append
        )
    assert raised.value is last and call.calls == 3
    assert waits == [1.0, 2.0]  # no wait after the last attempt


def test_a_permanent_error_is_not_retried() -> None:
    waits: list[float] = []
    call = Flaky(ValueError("bad request"))
    with pytest.raises(ValueError, match="bad request"):
        retry_call(
            call,
            attempts=5,
            delay_s=exponential(0.1),
            retry_on=lambda exc: isinstance(exc, OSError),
            sleep=waits.append,
        )
    assert call.calls == 1 and waits == []


def test_backoffs_and_bad_attempts() -> None:
    assert [exponential(0.25, cap_s=2.0)(i) for i in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [linear(0.5)(i) for i in range(3)] == [0.5, 1.0, 1.5]
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        retry_call(Flaky(), attempts=0, delay_s=linear(1), retry_on=lambda e: True)
