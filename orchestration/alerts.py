"""Alerts: a failed run is recorded under `$MLOPS_HOME/alerts` and sent to notifiers.

A notifier is anything with `notify(alert)`. Two ship: a log line (always on) and a
webhook that POSTs the alert as JSON (on when a URL is configured). The webhook is bounded:
a timeout per attempt and a few attempts with backoff; when it still fails, the failure is
logged and recorded in the alert file, never raised, so an unreachable alerting endpoint
cannot wedge the sensor that reports failures.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from observability.retry import exponential, retry_call

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    run_id: str
    job_name: str
    message: str
    failed_steps: list[str] = field(default_factory=list)
    dagster_url: str | None = None
    at: float = field(default_factory=time.time)


class Notifier(Protocol):
    def notify(self, alert: Alert) -> None: ...


class LogNotifier:
    def notify(self, alert: Alert) -> None:
        log.error(
            "run %s of job %s failed: %s (steps: %s)",
            alert.run_id,
            alert.job_name,
            alert.message,
            ", ".join(alert.failed_steps) or "-",
        )


class WebhookError(RuntimeError):
    pass


@dataclass
class WebhookNotifier:
    url: str
    timeout_s: float = 5.0
    attempts: int = 3
    backoff_s: float = 0.5

    def notify(self, alert: Alert) -> None:
        def post() -> None:
            response = httpx.post(self.url, json=asdict(alert), timeout=self.timeout_s)
            if response.status_code >= 300:
                raise _Refused(f"HTTP {response.status_code}")

        try:
            retry_call(
                post,
                attempts=self.attempts,
                delay_s=exponential(self.backoff_s),
                retry_on=lambda exc: isinstance(exc, (httpx.HTTPError, _Refused)),
            )
        except _Refused as exc:
            last = str(exc)
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            return
        raise WebhookError(
            f"webhook {self.url} refused the alert after {self.attempts} attempts ({last})"
        )


class _Refused(Exception):
    """The webhook answered, but not with a 2xx."""


def record_and_notify(alert: Alert, record_file: Path, notifiers: list[Notifier]) -> list[str]:
    """Append the alert to `record_file` (JSON Lines), notify everyone; return delivery errors."""
    errors = []
    for notifier in notifiers:
        try:
            notifier.notify(alert)
        except Exception as exc:  # one broken notifier must not silence the others
            log.warning("alert notifier %s failed: %s", type(notifier).__name__, exc)
            errors.append(f"{type(notifier).__name__}: {exc}")
    record_file.parent.mkdir(parents=True, exist_ok=True)
    with record_file.open("a", encoding="utf-8") as f:
        f.write(json.dumps({**asdict(alert), "delivery_errors": errors}) + "\n")
    return errors
