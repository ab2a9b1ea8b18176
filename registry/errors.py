"""Typed registry errors: each names what failed, the offending value and what to do."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """Base class of every registry failure."""


class RegistryUnavailableError(RegistryError):
    """MLflow did not answer after the bounded retries; nothing was changed by this call."""

    def __init__(self, uri: str, operation: str, attempts: int, cause: BaseException) -> None:
        self.uri, self.operation, self.attempts = uri, operation, attempts
        super().__init__(
            f"MLflow at {uri} unreachable: {operation} failed {attempts} times "
            f"(last error: {str(cause)[:300]}); start the tracking server or fix "
            "MLFLOW_TRACKING_URI, then retry (the operation is safe to repeat)"
        )


class GateNotPassedError(RegistryError):
    """A version that did not pass the evaluation gate was asked to become champion."""


class PromotionConflictError(RegistryError):
    """The champion moved since the challenger was evaluated; re-evaluate against it."""


class PromotionLockTimeout(RegistryError):
    """Another promotion or rollback held the registry lock for too long."""


class RollbackUnavailableError(RegistryError):
    """There is no ``previous-champion`` to roll back to."""


class RegistryInconsistentError(RegistryError):
    """Aliases read back differ from what was just written: a writer bypassed the lock."""
