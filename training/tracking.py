"""Where rank 0 reports progress: MLflow, Dagster Pipes, or nowhere.

The training loop calls one ``Tracker``; without MLflow or Pipes it is the do-nothing
``NullTracker``, so the hot path has no conditionals. MLflow is used when
``--mlflow URI`` or ``MLFLOW_TRACKING_URI`` says so; the MLflow run id is kept in the
output directory so a restarted rank 0 keeps logging into the same MLflow run. Under
Dagster Pipes (``DAGSTER_PIPES_CONTEXT`` in the environment) a restarted rank 0 opens the
Pipes context again: messages go to the same channel, and the materialization is
reported once, when the run finishes. When either is on, rank 0 also draws the loss curve
(``OUTPUT/loss_curve.png``, see ``training.loss_curve``) before the others finish, and the
MLflow run gets it as an artifact; the Dagster asset inlines it in its metadata.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from training import loss_curve

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


class LossCurveWriter(NullTracker):
    """Draws the loss curve PNG when training finishes; a failure to draw never fails training."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def finish(self, summary: dict[str, Any]) -> None:
        history = summary.get("loss_history") or []
        try:
            loss_curve.render(history, self.path)
        except Exception as exc:  # a missing plot library or empty history is not fatal
            log.warning("loss curve not drawn to %s: %s", self.path, exc)


class MlflowTracker:
    """Logs params and metrics to one MLflow run that survives worker restarts."""

    def __init__(
        self, uri: str, experiment: str, state_file: Path, curve_file: Path | None = None
    ) -> None:
        # Bounded: a slow tracking server costs at most a few seconds per call, never the run.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        import mlflow

        self.mlflow = mlflow
        self.state_file = state_file
        self.curve_file = curve_file
        mlflow.set_tracking_uri(uri)
        location = _local_artifact_root(uri)
        if location and mlflow.get_experiment_by_name(experiment) is None:
            # MLflow's default would be ./mlruns under whatever directory training runs in.
            # Another run may create it meanwhile; set_experiment below then picks that up.
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                mlflow.create_experiment(experiment, artifact_location=location)
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
        if self.curve_file is not None and self.curve_file.is_file():
            try:
                self.mlflow.log_artifact(str(self.curve_file))
            except Exception as exc:  # the model is already written; the plot is a nicety
                log.warning("MLflow artifact upload of %s failed: %s", self.curve_file, exc)
        self.mlflow.end_run()


def _local_artifact_root(uri: str) -> str | None:
    """``artifacts/`` next to a SQLite tracking database, as the registry lays it out."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix) :]).resolve().parent / "artifacts").as_uri()


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
            # Membership of an elastic job: the world size of each attempt, how often it
            # changed and how many times the group re-formed after a failure or a join.
            "world_sizes",
            "world_size_changes",
            "recoveries",
        )
        self.context.report_asset_materialization(
            metadata={k: summary[k] for k in keys if summary.get(k) is not None}
        )
        self._open.__exit__(None, None, None)


def build_tracker(rank: int, mlflow_uri: str | None, output: Path) -> Tracker:
    if rank != 0:
        return NullTracker()
    trackers: list[Tracker] = []
    curve = loss_curve.curve_path(output)
    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        state = output / "mlflow_run.json"
        trackers.append(MlflowTracker(uri, "sovereign-lm-training", state, curve_file=curve))
    if os.environ.get("DAGSTER_PIPES_CONTEXT"):
        trackers.append(PipesTracker())
    if not trackers:
        return LossCurveWriter(curve)  # every run leaves its curve beside its checkpoints
    # First, so the curve exists when the MLflow run and the Dagster materialization close.
    return FanOut([LossCurveWriter(curve), *trackers])
