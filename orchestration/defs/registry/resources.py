"""`MlflowResource`: the registry as Dagster sees it.

Fields left empty follow the environment at run time (`MLFLOW_TRACKING_URI`, else the
embedded SQLite store under `$MLOPS_HOME/mlflow`), never at import time. `ui_url` is
only for links in asset metadata; it defaults to the tracking URI when that is HTTP, and
to the address of the documented `mlflow server` command for the embedded store.
"""

from urllib.parse import quote

import dagster as dg

from observability.settings import mlops_home
from registry import RegistryClient, RegistryConfig
from registry.config import MODEL_NAME

_EMBEDDED_UI = "http://127.0.0.1:5000"


class MlflowResource(dg.ConfigurableResource):
    tracking_uri: str | None = None
    """MLflow tracking URI; empty: `MLFLOW_TRACKING_URI` or the embedded SQLite store."""
    lock_url: str | None = None
    """Promotion lock: `postgresql://...` (advisory lock) or a lock file path; empty: derived."""
    ui_url: str | None = None
    """Base URL of the MLflow UI for links in metadata."""
    model_name: str = MODEL_NAME
    attempts: int = 4
    backoff_s: float = 0.5
    request_timeout_s: int = 10
    lock_timeout_s: float = 30.0

    def config(self) -> RegistryConfig:
        overrides = {
            "model_name": self.model_name,
            "experiment": self.model_name,
            "attempts": self.attempts,
            "backoff_s": self.backoff_s,
            "request_timeout_s": self.request_timeout_s,
            "lock_timeout_s": self.lock_timeout_s,
            "ui_url": self.ui_url or "",
        }
        if self.tracking_uri:
            overrides["tracking_uri"] = self.tracking_uri
        if self.lock_url:
            overrides["lock_url"] = self.lock_url
        return RegistryConfig.resolve(mlops_home(), **overrides)

    def client(self) -> RegistryClient:
        return RegistryClient(self.config())

    def _ui(self) -> str:
        return self.config().ui_base() or _EMBEDDED_UI

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self._ui()}/#/experiments/{experiment_id}/runs/{run_id}"

    def version_url(self, version: str) -> str:
        return f"{self._ui()}/#/models/{quote(self.model_name)}/versions/{version}"
