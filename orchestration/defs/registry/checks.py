"""The promotion gate as a blocking asset check on `registered_model`.

The check reads the verdict back from the registry (the version's `gate.*` tags), not
from the asset's own output, so it verifies what MLflow actually holds. Blocking: when it
fails with ERROR severity (verdict `failed`, or `inconclusive` under the
`require_force` policy), nothing downstream runs and the run fails; its description and
an ERROR log line name the verdict and the evidence (effect, bounds, n). An inconclusive
verdict under `keep_champion` fails with WARN severity: the version never became
`challenger`, so the rollout is a no-op and the champion keeps serving.
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
    verdict = tags.get("gate.verdict", "passed" if passed else "failed")
    policy = tags.get("gate.inconclusive_policy", "keep_champion")
    # An inconclusive verdict under keep_champion is not a failure of the run: nothing is
    # promoted (the version never became challenger) and the champion keeps serving.
    severity = (
        dg.AssetCheckSeverity.WARN
        if verdict == "inconclusive" and policy == "keep_champion"
        else dg.AssetCheckSeverity.ERROR
    )
    evidence = tags.get("gate.evidence", "")
    what = {
        "passed": "passed the evaluation gate",
        "failed": "failed the evaluation gate; the champion keeps serving",
        "inconclusive": (
            "got an inconclusive verdict; the champion keeps serving"
            if policy == "keep_champion"
            else "got an inconclusive verdict; promote it only explicitly: job `promote` with "
            f"ops.champion.config version {version!r} and a force_reason"
        ),
    }[verdict]
    description = f"version {version} {what}. {evidence}"
    if not passed:  # the line an operator reads in the run log, before Dagster's own failure
        log = context.log.error if severity == dg.AssetCheckSeverity.ERROR else context.log.warning
        log(f"gate verdict {verdict}: {description}")
    return dg.AssetCheckResult(
        passed=passed,
        severity=severity,
        description=description,
        metadata={
            "model_version": version,
            "verdict": verdict,
            "basis": tags.get("gate.basis", "unknown"),
            "evidence": evidence,
            "reasons": dg.MetadataValue.md(tags.get("gate.reasons", "")),
        },
    )
