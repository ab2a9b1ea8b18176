"""Contract: rank 0 logs params and metrics to MLflow when asked, into one run across restarts.

Without MLflow or Pipes configured rank 0 only draws its loss curve; other ranks track nothing.
"""

from __future__ import annotations

import json

from training.tracking import LossCurveWriter, NullTracker, build_tracker


def test_no_backend_means_only_the_loss_curve(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DAGSTER_PIPES_CONTEXT", raising=False)
    assert isinstance(build_tracker(0, None, tmp_path), LossCurveWriter)
    assert isinstance(build_tracker(1, "sqlite:///x.db", tmp_path), NullTracker)  # rank 0 only


def test_mlflow_run_gets_params_and_metrics_and_is_reused(tmp_path, corpus, tiny_config, tr):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    cmd = tr.command(corpus, out, tiny_config, nproc=1, steps=10, every=5, extra=["--mlflow", uri])
    result = tr.run(cmd, out)
    assert result.rc == 0, result.stderr[-4000:]
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.params["seed"] == "0" and run.data.params["model.hidden_size"] == "32"
    losses = client.get_metric_history(run_id, "loss")
    assert [m.step for m in losses] == [5, 10]
    assert run.data.tags["training.output_model"] == str(out / "model")
    # A second start of the same output directory (a restart) logs into the same MLflow run.
    (out / "model" / "training_summary.json").unlink()
    again = tr.run(cmd, out)
    assert again.rc == 0, again.stderr[-4000:]
    assert len(client.search_runs([run.info.experiment_id])) == 1
