"""Operations: retrain triggers (nightly schedule, new data) and alerts on failed runs."""

import os

import dagster as dg

from orchestration.alerts import Alert, LogNotifier, Notifier, WebhookNotifier, record_and_notify
from orchestration.resources import MlopsHome

from .retrain import RetrainPolicy, retrain_on_new_data


class AlertsResource(dg.ConfigurableResource):
    """Where failure alerts go: always the log and `$MLOPS_HOME/alerts/failures.jsonl`;
    also a webhook when `webhook_url` is set (`MLOPS_ALERT_WEBHOOK_URL` by default)."""

    webhook_url: str | None = None

    def notifiers(self) -> list[Notifier]:
        notifiers: list[Notifier] = [LogNotifier()]
        url = self.webhook_url or os.environ.get("MLOPS_ALERT_WEBHOOK_URL")
        if url:
            notifiers.append(WebhookNotifier(url))
        return notifiers


# `monitor_all_code_locations`: a run launched with `dagster job execute` (the README's CI
# path) carries no code-location origin, so a sensor that watches only its own location never
# sees it; an operator wants every failed run of the instance reported, however it started.
@dg.run_failure_sensor(
    name="run_failure_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=True,
    minimum_interval_seconds=5,
    description=(
        "Records every failed run of the instance (UI, schedule, sensor or `dagster job "
        "execute`) under $MLOPS_HOME/alerts and notifies (log, webhook)."
    ),
)
def run_failure_alerts(
    context: dg.RunFailureSensorContext, mlops: MlopsHome, alerts: AlertsResource
):
    failed_steps = [e.step_key for e in context.get_step_failure_events() if e.step_key]
    alert = Alert(
        run_id=context.dagster_run.run_id,
        job_name=context.dagster_run.job_name,
        message=context.failure_event.message or "run failed",
        failed_steps=failed_steps,
    )
    errors = record_and_notify(alert, mlops.path("alerts", "failures.jsonl"), alerts.notifiers())
    if errors:
        context.log.warning(f"alert delivery problems: {errors}")


nightly_retrain = dg.ScheduleDefinition(
    name="nightly_retrain",
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    job_name="train_and_deploy",
    description="Runs the main job every night at 02:00 UTC (off until switched on in the UI).",
)

defs = dg.Definitions(
    sensors=[run_failure_alerts, retrain_on_new_data],
    schedules=[nightly_retrain],
    resources={"alerts": AlertsResource(), "retrain_policy": RetrainPolicy()},
)
