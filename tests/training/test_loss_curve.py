"""Contract: rank 0 draws the loss curve to ``OUTPUT/loss_curve.png`` and reports it.

The PNG is valid and small (under 60 KB, so it can be inlined), lives next to the model
directory and never inside it (the model directory is the served artifact), is logged to
the MLflow training run when MLflow is on, and becomes ``trained_model`` asset metadata: an
inline markdown image plus the file path. A failure to draw never fails training.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import dagster as dg
import pytest

from orchestration.defs.training.assets import loss_curve_metadata
from training import loss_curve
from training.tracking import FanOut, LossCurveWriter, build_tracker

EXPERIMENT = "sovereign-lm-training"


def _history(steps: int = 300) -> list[list[float]]:
    return [
        [s, round(6.0 * math.exp(-s / 60) + 0.5 + 0.05 * math.sin(s), 6)] for s in range(1, steps)
    ]


def test_render_writes_a_small_valid_png(tmp_path):
    path = loss_curve.render(_history(), loss_curve.curve_path(tmp_path))
    assert path == tmp_path / "loss_curve.png"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (400, 240)  # 5x3 inches at 80 dpi
    assert 2_000 < len(data) < 60_000
    assert [p.name for p in tmp_path.iterdir()] == ["loss_curve.png"]  # no temporary left


def test_render_refuses_an_empty_history(tmp_path):
    with pytest.raises(ValueError, match="loss_history is empty"):
        loss_curve.render([], tmp_path / "loss_curve.png")
    assert not (tmp_path / "loss_curve.png").exists()


def test_writer_never_fails_training(tmp_path, caplog):
    LossCurveWriter(tmp_path / "loss_curve.png").finish({"loss_history": []})
    assert not (tmp_path / "loss_curve.png").exists()
    assert "loss curve not drawn" in caplog.text


def test_cli_draws_a_finished_run(tmp_path):
    (tmp_path / "model").mkdir()
    summary = {"loss_history": _history(40)}
    (tmp_path / "model" / "training_summary.json").write_text(json.dumps(summary))
    assert loss_curve.main([str(tmp_path)]) == 0
    assert loss_curve.is_png(tmp_path / "loss_curve.png")
    assert loss_curve.main([str(tmp_path / "missing")]) == 1


def test_asset_metadata_inlines_the_png(tmp_path):
    path = loss_curve.render(_history(), tmp_path / "loss_curve.png")
    meta = loss_curve_metadata(path)
    assert isinstance(meta["loss_curve"], dg.MarkdownMetadataValue)
    text = meta["loss_curve"].value
    prefix = "![loss curve](data:image/png;base64,"
    assert text.startswith(prefix) and text.endswith(")")
    assert base64.b64decode(text[len(prefix) : -1]) == path.read_bytes()
    assert meta["loss_curve_path"] == dg.MetadataValue.path(str(path))


def test_asset_metadata_skips_a_missing_or_corrupt_curve(tmp_path):
    assert loss_curve_metadata(tmp_path / "loss_curve.png") == {}
    (tmp_path / "loss_curve.png").write_bytes(b"not a png at all")
    assert loss_curve_metadata(tmp_path / "loss_curve.png") == {}


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    import mlflow

    for key, value in (
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"),
    ):
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DAGSTER_PIPES_CONTEXT", raising=False)
    previous = mlflow.get_tracking_uri()
    yield f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def test_tracker_logs_the_curve_to_the_mlflow_run(tmp_path, mlflow_uri):
    import mlflow

    (tmp_path / "mlflow").mkdir()
    out = tmp_path / "run"
    out.mkdir()
    tracker = build_tracker(0, mlflow_uri, out)
    assert isinstance(tracker, FanOut) and isinstance(tracker.trackers[0], LossCurveWriter)
    tracker.start({"seed": 0})
    tracker.metrics({"loss": 1.0}, step=1)
    tracker.finish({"loss_history": _history(), "model_path": str(out / "model")})

    assert loss_curve.is_png(out / "loss_curve.png")
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    assert [a.path for a in client.list_artifacts(run_id)] == ["loss_curve.png"]
    local = Path(client.download_artifacts(run_id, "loss_curve.png", str(tmp_path / "dl")))
    assert local.read_bytes() == (out / "loss_curve.png").read_bytes()
    # Artifacts sit next to the SQLite database, not under the working directory.
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location == (tmp_path / "mlflow" / "artifacts").as_uri()


def test_training_run_draws_and_logs_the_curve(tmp_path, corpus, tiny_config, tr):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    cmd = tr.command(corpus, out, tiny_config, nproc=1, steps=10, every=10, extra=["--mlflow", uri])
    result = tr.run(cmd, out)
    assert result.rc == 0, result.stderr[-4000:]
    assert loss_curve.is_png(out / "loss_curve.png")
    assert not (out / "model" / "loss_curve.png").exists()  # the served directory stays clean
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    assert len(summary["loss_history"]) == 10
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    artifacts = mlflow.MlflowClient(tracking_uri=uri).list_artifacts(run_id)
    assert "loss_curve.png" in [a.path for a in artifacts]
