"""`retrain_on_new_data`: start the main job when enough new records arrived since the
champion's data version.

A sensor rather than declarative automation: the condition compares the corpus with the
champion's lineage, which lives in the MLflow registry, outside anything Dagster's
automation conditions can observe. The run key is the corpus version, so one data version
triggers at most one retrain however many ticks see it; with no champion yet the main job
is what creates one, so the sensor waits for it rather than racing it.
"""

import dagster as dg

from ingestion.lake import corpus_rows, corpus_version
from orchestration.defs.registry.resources import MlflowResource
from orchestration.resources import MlopsHome
from registry import CHAMPION, Lineage, RegistryError


class RetrainPolicy(dg.ConfigurableResource):
    """How many new accepted records since the champion's data version justify a retrain."""

    min_new_records: int = 1_000


@dg.sensor(
    name="retrain_on_new_data",
    job_name="train_and_deploy",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Starts train_and_deploy when at least `min_new_records` accepted records arrived "
        "since the data version the champion was trained on (run key = corpus version)."
    ),
)
def retrain_on_new_data(
    context: dg.SensorEvaluationContext,
    mlops: MlopsHome,
    mlflow_registry: MlflowResource,
    retrain_policy: RetrainPolicy,
):
    current = corpus_version(mlops.lake())
    if current is None:
        return dg.SkipReason("no corpus yet")
    try:
        client = mlflow_registry.client()
        champion = client.aliases().get(CHAMPION)
        tags = client.version_tags(champion) if champion else {}
    except RegistryError as exc:
        return dg.SkipReason(f"registry unavailable, will retry: {exc}")
    if not champion:
        return dg.SkipReason("no champion yet: the first train_and_deploy run creates one")
    trained_on = Lineage.from_tags(tags).data_version
    if trained_on is None:
        return dg.SkipReason(f"champion v{champion} records no data version; nothing to compare")
    if trained_on >= current:
        return dg.SkipReason(f"champion v{champion} was trained on the current data version")
    new = corpus_rows(mlops.lake(), current) - corpus_rows(mlops.lake(), trained_on)
    if new < retrain_policy.min_new_records:
        return dg.SkipReason(
            f"{new} new records since data version {trained_on}; "
            f"waiting for {retrain_policy.min_new_records}"
        )
    return dg.RunRequest(
        run_key=f"corpus-v{current}",
        tags={"mlops/trigger": "new-data", "mlops/new-records": str(new)},
    )
