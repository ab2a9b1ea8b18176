"""The Dagster code location: every domain's definitions, merged, plus cross-domain jobs.

``dagster dev -w workspace.yaml`` and ``dagster job execute -m orchestration.definitions``
both load ``defs`` from here. Each domain under ``orchestration/defs/`` exposes its own
``defs``; this module only wires global policy: the shared ``mlops`` resource and the jobs
that span domains (the main job ``train_and_deploy``).
"""

from __future__ import annotations

import dagster as dg

from orchestration.defs import data, ops
from orchestration.jobs import LAKE_WRITER_TAGS
from orchestration.resources import MlopsHome

train_and_deploy = dg.define_asset_job(
    "train_and_deploy",
    selection=dg.AssetSelection.all(),
    description=("The main job: ingest -> validate -> split, and everything downstream of it."),
    tags=LAKE_WRITER_TAGS,
)

defs = dg.Definitions.merge(
    data.defs,
    ops.defs,
    dg.Definitions(jobs=[train_and_deploy], resources={"mlops": MlopsHome()}),
)
