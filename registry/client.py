"""An MLflow client whose every call has a timeout and a bounded, backed-off retry.

MLflow's own HTTP layer retries for minutes by default (7 retries, 120 s timeout); here its
retries are turned down to zero and its timeout to ``request_timeout_s`` (through MLflow's
documented environment variables, unless the operator set them, which also turn its
artifact progress bars off), so that the retry policy
lives in one place: ``RegistryClient.call``. Only transient failures (connection refused,
timeouts, 5xx, SQLite "database is locked") are retried; a "not found" or "invalid
parameter" is an answer, not an outage, and is raised at once. When the attempts run out a
``RegistryUnavailableError`` names the URI and the operation. Each call is one span
(``mlflow OPERATION``) when traces are exported (``observability/tracing.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TypeVar

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from observability.retry import exponential, retry_call
from observability.tracing import span
from registry.config import RegistryConfig
from registry.errors import RegistryUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES
    # SQLAlchemy's OperationalError (database locked, connection lost) reaches us unwrapped
    # from a few store paths; match by name so this module does not import SQLAlchemy.
    return type(exc).__name__ == "OperationalError"


class RegistryClient:
    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(config.request_timeout_s))
        # artifact copies print a tqdm bar per model logged or fetched, raw frames in logs
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.mlflow = MlflowClient(
            tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri
        )

    def call(self, operation: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run ``fn(*args, **kwargs)``, retrying transient failures with exponential backoff."""
        with span(f"mlflow {operation}", operation=operation, model=self.config.model_name):
            return self._call(operation, fn, *args, **kwargs)

    def _call(self, operation: str, fn: Callable[..., T], *args, **kwargs) -> T:
        cfg = self.config

        def retrying(attempt: int, exc: BaseException, delay: float) -> None:
            log.warning(
                "MLflow %s failed (attempt %d/%d), retrying in %.1fs: %s",
                operation,
                attempt,
                cfg.attempts,
                delay,
                str(exc)[:200],
            )

        try:
            return retry_call(
                lambda: fn(*args, **kwargs),
                attempts=cfg.attempts,
                delay_s=exponential(cfg.backoff_s),
                retry_on=is_transient,
                on_retry=retrying,
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise RegistryUnavailableError(cfg.tracking_uri, operation, cfg.attempts, exc) from exc

    def aliases(self) -> dict[str, str]:
        """alias -> version of the registered model, in one read (a consistent snapshot);
        empty while the model has no version yet."""
        try:
            model = self.call(
                "get_registered_model", self.mlflow.get_registered_model, self.config.model_name
            )
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {alias: str(version) for alias, version in model.aliases.items()}  # ints locally

    def model_tags(self) -> dict[str, str]:
        model = self.call(
            "get_registered_model", self.mlflow.get_registered_model, self.config.model_name
        )
        return dict(model.tags)

    def version_tags(self, version: str) -> dict[str, str]:
        mv = self.call(
            "get_model_version", self.mlflow.get_model_version, self.config.model_name, version
        )
        return dict(mv.tags)
