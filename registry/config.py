"""Where the registry lives: tracking URI, artifact root, model name, lock and retry policy.

The embedded default keeps everything under ``$MLOPS_HOME/mlflow`` (SQLite database and
local artifacts) so one machine needs no server; ``MLFLOW_TRACKING_URI``, when set, sends
everything through that server instead. Both are read when ``RegistryConfig.resolve`` is
called, never at import time. To browse the embedded store::

    mlflow server --backend-store-uri sqlite:///$MLOPS_HOME/mlflow/mlflow.db \\
        --default-artifact-root $MLOPS_HOME/mlflow/artifacts --host 127.0.0.1 --port 5000

A shared server for several hosts should proxy artifacts instead (``--artifacts-destination
DIR_OR_BUCKET``, no ``--default-artifact-root``), so clients need only its HTTP address.

The promotion lock (see ``locking.py``) follows the backend: a PostgreSQL advisory lock
when the backend store is PostgreSQL, otherwise a file lock beside the SQLite database or
under ``$MLOPS_HOME/mlflow``. With an HTTP tracking URI the client cannot see the backend,
so ``lock_url`` (``MLOPS_REGISTRY_LOCK_URL``) should name the server's PostgreSQL database;
left unset it falls back to the local file lock, which guards one host only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from observability import settings
from observability.settings import home_from

MODEL_NAME = "sovereign-lm"


@dataclass(frozen=True)
class RegistryConfig:
    tracking_uri: str
    artifact_root: str | None = None  # only for a local backend; a server chooses its own
    model_name: str = MODEL_NAME
    experiment: str = MODEL_NAME
    lock_url: str = ""  # postgresql://... or a file path; empty: derived from tracking_uri
    ui_url: str = ""  # base URL of the MLflow UI for links; empty: the tracking URI if HTTP
    attempts: int = 4
    backoff_s: float = 0.5  # doubles per attempt: 0.5 + 1 + 2 = 3.5 s of waiting at most
    request_timeout_s: int = 10
    lock_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.tracking_uri:
            raise ValueError("tracking_uri must not be empty")
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.request_timeout_s < 1 or self.lock_timeout_s <= 0:
            raise ValueError(
                f"backoff_s={self.backoff_s}, request_timeout_s={self.request_timeout_s} and "
                f"lock_timeout_s={self.lock_timeout_s} must be positive"
            )

    @property
    def is_http(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    @classmethod
    def resolve(cls, mlops_home: str | Path | None = None, **overrides) -> RegistryConfig:
        """The embedded default under ``$MLOPS_HOME``, or ``MLFLOW_TRACKING_URI`` when set."""
        home = home_from(mlops_home) if mlops_home else settings.mlops_home()
        uri = overrides.pop("tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI", "")
        artifact_root = overrides.pop("artifact_root", None)
        if not uri:
            (home / "mlflow").mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
            artifact_root = artifact_root or str(home / "mlflow" / "artifacts")
        lock_url = overrides.pop("lock_url", None) or os.environ.get("MLOPS_REGISTRY_LOCK_URL", "")
        cfg = cls(tracking_uri=uri, artifact_root=artifact_root, **overrides)
        return replace(cfg, lock_url=lock_url or cfg.default_lock_url(home))

    def default_lock_url(self, mlops_home: Path) -> str:
        uri = self.tracking_uri
        if uri.startswith("postgresql"):
            return "postgresql://" + uri.split("://", 1)[1]  # drop any +driver suffix
        if uri.startswith("sqlite:///"):
            return uri.removeprefix("sqlite:///") + ".promotion.lock"
        return str(mlops_home / "mlflow" / "promotion.lock")

    def ui_base(self) -> str | None:
        if self.ui_url:
            return self.ui_url.rstrip("/")
        return self.tracking_uri.rstrip("/") if self.is_http else None
