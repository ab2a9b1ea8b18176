"""Where rank 0 reports progress: MLflow, Dagster Pipes, or nowhere.

The training loop calls one ``Tracker``; without MLflow or Pipes it is the do-nothing
``NullTracker``, so the hot path has no conditionals. MLflow is used when
``--mlflow URI`` or ``MLFLOW_TRACKING_URI`` says so; the MLflow run id is kept in the
output directory so a restarted rank 0 keeps logging into the same MLflow run. Under
Dagster Pipes (``DAGSTER_PIPES_CONTEXT`` in the environment) a restarted rank 0 opens the
Pipes context again: messages go to the same channel, and the materialization is
reported once, when the run finishes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("training.tracking")


class Tracker(Protocol):
    def start(self, params: dict[str, Any]) -> None: ...
    def metrics(self, values: dict[str, float], step: int) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


class NullTracker:
    def start(self, params: dict[str, Any]) -> None:
        pass

    def metrics(self, values: dict[str, float], step: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


class FanOut:
    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def start(self, params: dict[str, Any]) -> None:
        for t in self.trackers:
            t.start(params)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.metrics(values, step)

    def message(self, text: str) -> None:
        for t in self.trackers:
            t.message(text)

    def finish(self, summary: dict[str, Any]) -> None:
        for t in self.trackers:
            t.finish(summary)


class MlflowTracker:
    """Logs params and metrics to one MLflow run that survives worker restarts."""

    def __init__(self, uri: str, experiment: str, state_file: Path) -> None:
        # Bounded: a slow tracking server costs at most a few seconds per call, never the run.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        import mlflow

        self.mlflow = mlflow
        self.state_file = state_file
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)

    def start(self, params: dict[str, Any]) -> None:
        run_id = None
        if self.state_file.is_file():
            run_id = json.loads(self.state_file.read_text(encoding="utf-8")).get("run_id")
        run = self.mlflow.start_run(run_id=run_id)
        if run_id is None:
            self.state_file.write_text(json.dumps({"run_id": run.info.run_id}), encoding="utf-8")
            self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def metrics(self, values: dict[str, float], step: int) -> None:
        try:
            self.mlflow.log_metrics(values, step=step)
        except Exception as exc:  # tracking must never stop training
            log.warning("MLflow metric logging failed at step %d: %s", step, exc)

    def message(self, text: str) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        self.mlflow.set_tags({"training.output_model": str(summary.get("model_path", ""))})
        self.mlflow.end_run()


class PipesTracker:
    """Streams progress to Dagster and reports the materialization at the end."""

    def __init__(self) -> None:
        from dagster_pipes import open_dagster_pipes

        self._open = open_dagster_pipes()
        self.context = self._open.__enter__()

    def start(self, params: dict[str, Any]) -> None:
        attempt = params.get("restart_count", 0)
        self.context.log.info(
            f"training started (restart {attempt}), output {params.get('output')}"
        )

    def metrics(self, values: dict[str, float], step: int) -> None:
        pass  # progress lines go through message(); metrics land in the final metadata

    def message(self, text: str) -> None:
        self.context.log.info(text)

    def finish(self, summary: dict[str, Any]) -> None:
        keys = (
            "model_path",
            "data_path",
            "data_version",
            "steps",
            "tokens",
            "final_loss",
            "tokens_per_s",
            "wall_time_s",
            "config_hash",
            "world_size",
            "engine",
            "restarts",
        )
        self.context.report_asset_materialization(
            metadata={k: summary[k] for k in keys if summary.get(k) is not None}
        )
        self._open.__exit__(None, None, None)


def build_tracker(rank: int, mlflow_uri: str | None, output: Path) -> Tracker:
    if rank != 0:
        return NullTracker()
    trackers: list[Tracker] = []
    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        trackers.append(MlflowTracker(uri, "sovereign-lm-training", output / "mlflow_run.json"))
    if os.environ.get("DAGSTER_PIPES_CONTEXT"):
        trackers.append(PipesTracker())
    if not trackers:
        return NullTracker()
    return trackers[0] if len(trackers) == 1 else FanOut(trackers)
