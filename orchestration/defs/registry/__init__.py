"""Dagster definitions of the registry domain: evaluation, registration, promotion, rollback."""

from __future__ import annotations

import dagster as dg

from .assets import champion, evaluation, registered_model
from .checks import gate
from .jobs import promote, rollback
from .resources import MlflowResource

__all__ = ["MlflowResource", "defs"]

defs = dg.Definitions(
    assets=[evaluation, registered_model, champion],
    asset_checks=[gate],
    jobs=[promote, rollback],
    resources={"mlflow_registry": MlflowResource()},
)
