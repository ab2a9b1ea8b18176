"""The promotion gate as a blocking asset check on ``registered_model``.

The check reads the verdict back from the registry (the version's ``gate.passed`` tag),
not from the asset's own output, so it verifies what MLflow actually holds. Blocking: when
it fails, ``champion`` does not run in the same job.
"""

import dagster as dg

from registry import RegistryError

from .assets import registered_model, registry_failure
from .resources import MlflowResource


@dg.asset_check(
    asset=registered_model,
    blocking=True,
    name="gate",
    description="The registered version passed the evaluation gate (read back from MLflow); blocks promotion.",
)
def gate(
    context: dg.AssetCheckExecutionContext, mlflow_registry: MlflowResource
) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(registered_model.key)
    if event is None or event.asset_materialization is None:
        return dg.AssetCheckResult(passed=False, description="registered_model not materialized")
    version = str(event.asset_materialization.metadata["model_version"].value)
    try:
        tags = mlflow_registry.client().version_tags(version)
    except RegistryError as exc:
        raise registry_failure(exc) from exc
    passed = tags.get("gate.passed") == "true"
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"version {version} {'passed' if passed else 'failed'} the evaluation gate",
        metadata={
            "model_version": version,
            "reasons": dg.MetadataValue.md(tags.get("gate.reasons", "")),
        },
    )
