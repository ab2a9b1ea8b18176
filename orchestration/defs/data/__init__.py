"""Dagster definitions of the data layer: ingestion, quarantine, the split, eval suites, the landing sensor."""

from __future__ import annotations

import dagster as dg

from observability.settings import Settings
from orchestration.jobs import LAKE_WRITER_TAGS

from .assets import corpus_split, ingest_landing_files
from .evals import eval_suites
from .sensors import landing_zone_sensor
from .stream import StreamResource, stream_commits_sensor_every, stream_consumer_lag

ingest_job = dg.define_asset_job(
    "ingest",
    selection=dg.AssetSelection.assets(ingest_landing_files, corpus_split, eval_suites),
    description=(
        "Ingest new landing files into the corpus and quarantine, then report the split; "
        "ingest new eval-suite files."
    ),
    tags=LAKE_WRITER_TAGS,
)

defs = dg.Definitions(
    assets=[ingest_landing_files, corpus_split, eval_suites],
    jobs=[ingest_job],
    sensors=[landing_zone_sensor],
)


def build_stream_defs(settings: Settings) -> dg.Definitions:
    """The stream's definitions, its sensor at the configured interval."""
    return dg.Definitions(
        asset_checks=[stream_consumer_lag],
        sensors=[stream_commits_sensor_every(settings.stream_sensor_interval_s)],
        resources={"stream": StreamResource()},
    )
