"""Operator jobs of the registry domain: `promote` and `rollback`.

`promote` materializes `champion` alone: the current challenger becomes champion if it
passed the gate against the current champion (a no-op when it already is champion).
`rollback` moves `champion` back to `previous-champion`; its reason is required and
recorded on the version that was rolled back; running it twice changes nothing. It records
the move as a materialization of `champion`, so Dagster names the version MLflow serves.
"""

import dagster as dg

from registry import RegistryError
from registry import rollback as rollback_champion

from .assets import champion, champion_metadata, registry_failure, report_champion
from .resources import MlflowResource

promote = dg.define_asset_job(
    "promote",
    selection=dg.AssetSelection.assets(champion),
    description="Move champion to the current challenger (gated; no-op when already champion).",
)


class RollbackConfig(dg.Config):
    reason: str
    """Why the champion is being rolled back; recorded on the version."""


@dg.op
def rollback_op(
    context: dg.OpExecutionContext, config: RollbackConfig, mlflow_registry: MlflowResource
) -> None:
    try:
        client = mlflow_registry.client()
        change = rollback_champion(client, config.reason, f"dagster:{context.run_id}")
        meta = champion_metadata(change, "rollback", config.reason, client, mlflow_registry)
    except (RegistryError, ValueError) as exc:
        raise registry_failure(exc) from exc
    context.log.info(change.message)
    report_champion(context, meta)


@dg.job(description="Move champion back to previous-champion; config: reason.")
def rollback() -> None:
    rollback_op()
