"""The Dagster code location: every domain's definitions, merged, plus cross-domain jobs.

`dagster dev -w workspace.yaml` and `dagster job execute -m orchestration.definitions`
both load `defs` from here. Each domain under `orchestration/defs/` exposes its own
`defs`; this module only wires global policy: the shared `mlops` resource and the jobs
that span domains (the main job `train_and_deploy`).
"""

from __future__ import annotations

import warnings

import dagster as dg

from observability.settings import Settings
from orchestration.defs import data, ops, partners, registry, serving, training
from orchestration.jobs import LAKE_WRITER_TAGS, ROLLOUT_TAGS
from orchestration.resources import MlopsHome

# deploy/dagster/*.yaml name a run-log handler (the JSON logs option); Dagster marks
# yaml-defined handlers beta and would print that on every step of every run.
warnings.filterwarnings("ignore", message="Handling yaml-defined logging configuration")
# Raised by Dagster's own Pipes client on every training launch: nothing a user can act on.
warnings.filterwarnings(
    "ignore",
    message=r"Function `PipesMessageReader.expected_writer_count`",
    category=dg.PreviewWarning,
)

train = dg.define_asset_job(
    "train",
    selection=dg.AssetSelection.assets("trained_model", "evaluation", "registered_model"),
    description=(
        "Train on the current corpus version with torchrun, evaluate against the champion, "
        "and register the model; it becomes `challenger` only if it passes the gate."
    ),
)

train_and_deploy = dg.define_asset_job(
    "train_and_deploy",
    # `champion` is the operator's direct promotion (job `promote`); in the main job the
    # challenger becomes champion at the end of a successful canary rollout instead, and
    # `deployment` records that move as a materialization of `champion`. The
    # partner layer's assets stay out: the main job must complete with every partner gone.
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets("champion")
    - partners.OFF_MAIN_JOB,
    description=(
        "The main job: ingest -> validate -> split -> train -> evaluate -> register -> "
        "canary rollout; the challenger becomes champion when the rollout passes."
    ),
    tags={**LAKE_WRITER_TAGS, **ROLLOUT_TAGS},
)


def build_definitions(settings: Settings) -> dg.Definitions:
    """The whole code location; ``settings`` fix what Dagster fixes at definition time (the
    sensors' intervals)."""
    return dg.Definitions.merge(
        data.defs,
        data.build_stream_defs(settings),
        training.defs,
        registry.defs,
        serving.defs,
        partners.build_defs(settings),
        ops.defs,
        dg.Definitions(jobs=[train, train_and_deploy], resources={"mlops": MlopsHome()}),
    )


# Dagster loads the code location from this name: the settings are read here, once, when
# the definitions are built, and nowhere at import of the domain modules.
defs = build_definitions(Settings.from_env())
