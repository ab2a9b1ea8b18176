"""`landing_zone_sensor`: start an `ingest` run for each new file in the landing zone.

The run key is the file's content fingerprint, and Dagster never launches two runs for
one key, so a file triggers one run however many ticks see it (and a copy of it under
another name triggers none). Ingestion itself is idempotent as well, so a run started by
hand over the same file is harmless.
"""

import dagster as dg

from ingestion.config import IngestConfig
from ingestion.pipeline import discover
from orchestration.resources import MlopsHome

INGEST_OP = "ingest_landing_files"


@dg.sensor(
    job_name="ingest",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts an `ingest` run per new landing file (run key = content fingerprint).",
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, mlops: MlopsHome):
    landing = mlops.landing()
    if not landing.is_dir():
        return dg.SkipReason(f"landing directory {landing} does not exist yet")
    new = discover(IngestConfig(landing_dir=landing, lake_dir=mlops.lake()))
    if not new:
        return dg.SkipReason(f"no new files in {landing}")
    first_by_fingerprint = {}
    for f in new:  # a renamed copy in the same tick would reuse the key
        first_by_fingerprint.setdefault(f.fingerprint, f)
    return [
        dg.RunRequest(
            run_key=f.fingerprint,
            run_config={"ops": {INGEST_OP: {"config": {"files": [f.relative]}}}},
            tags={"mlops/source-file": f.relative[:200], "mlops/fingerprint": f.fingerprint},
        )
        for f in first_by_fingerprint.values()
    ]
