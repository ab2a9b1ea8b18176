"""Contract: the registry resolves to the embedded SQLite store under $MLOPS_HOME unless
MLFLOW_TRACKING_URI is set, and the promotion lock follows the backend store."""

from __future__ import annotations

import pytest

from registry import RegistryConfig


def test_embedded_default_under_mlops_home(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLOPS_REGISTRY_LOCK_URL", raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    cfg = RegistryConfig.resolve()
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert cfg.artifact_root == str(tmp_path / "mlflow" / "artifacts")
    assert cfg.lock_url == f"{tmp_path}/mlflow/mlflow.db.promotion.lock"
    assert cfg.model_name == "sovereign-lm" and cfg.ui_base() is None


def test_tracking_uri_from_environment_goes_through_http(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.delenv("MLOPS_REGISTRY_LOCK_URL", raising=False)
    cfg = RegistryConfig.resolve(tmp_path)
    assert cfg.is_http and cfg.artifact_root is None
    assert cfg.lock_url == str(tmp_path.resolve() / "mlflow" / "promotion.lock")
    assert cfg.ui_base() == "http://mlflow.internal:5000"
    monkeypatch.setenv("MLOPS_REGISTRY_LOCK_URL", "postgresql://mlflow@db/mlflow")
    assert RegistryConfig.resolve(tmp_path).lock_url == "postgresql://mlflow@db/mlflow"


def test_postgres_backend_uses_an_advisory_lock_on_it(tmp_path):
    cfg = RegistryConfig.resolve(tmp_path, tracking_uri="postgresql+psycopg2://u@db:5432/mlflow")
    assert cfg.lock_url == "postgresql://u@db:5432/mlflow"


@pytest.mark.parametrize(
    ("field", "value"),
    [("tracking_uri", ""), ("attempts", 0), ("backoff_s", -1.0), ("lock_timeout_s", 0.0)],
)
def test_rejects_invalid_fields_by_name(field, value):
    kwargs = {"tracking_uri": "sqlite:///x.db", field: value}
    with pytest.raises(ValueError, match=field):
        RegistryConfig(**kwargs)
