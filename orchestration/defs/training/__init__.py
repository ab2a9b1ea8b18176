"""Dagster definitions of the training domain: the `trained_model` asset and its launcher."""

from __future__ import annotations

import dagster as dg

from .assets import trained_model
from .resources import TrainingLauncher

defs = dg.Definitions(assets=[trained_model], resources={"trainer": TrainingLauncher()})
