"""Contract: a model written by the real training program (``torchrun -m training``) goes
through evaluation, registration and promotion unchanged: lineage comes from its
``training_summary.json``, the evaluation metrics land on the trainer's own MLflow run, and
``models:/NAME@champion`` loads it back offline and generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from evaluation import EvaluationConfig, GateConfig, evaluate
from registry import CHAMPION, RegistryClient, RegistryConfig, lineage_of, promote, register_version

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TINY = {
    "model": {
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 1,
        "num_kv_heads": 1,
        "intermediate_size": 64,
        "vocab_size": 320,
        "max_position_embeddings": 64,
    },
    "data": {"seq_len": 32, "batch_size": 8, "tokenizer_sample": 1000},
}


def test_trainer_artifact_end_to_end(tmp_path, corpus):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "MLFLOW_TRACKING_URI": tracking,
    }
    out = tmp_path / "run"
    train = subprocess.run(
        [
            str(Path(sys.executable).with_name("torchrun")),
            "--standalone",
            "--nproc-per-node",
            "1",
            "-m",
            "training",
            "--data",
            str(corpus),
            "--output",
            str(out),
            "--max-steps",
            "20",
            "--checkpoint-every",
            "20",
            "--seed",
            "0",
            "--config",
            str(config),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    model_dir = out / "model"
    summary = json.loads((model_dir / "training_summary.json").read_text())
    trainer_run = json.loads((out / "mlflow_run.json").read_text())["run_id"]

    # 20 steps teach little: the floors are off, the artifact's path through the system is on trial.
    gate = GateConfig(min_exact_match=0.0, max_perplexity=1e9)
    report = evaluate(model_dir, corpus, summary["data_version"], EvaluationConfig(40, gate=gate))
    assert report.decision.passed and 1.0 < report.challenger.perplexity < 320

    client = RegistryClient(
        RegistryConfig(
            tracking_uri=tracking,
            artifact_root=str(tmp_path / "artifacts"),
            lock_url=str(tmp_path / "promotion.lock"),
        )
    )
    registered = register_version(client, model_dir, report, lineage_of(model_dir, "dagster-run-7"))
    assert registered.run_id == trainer_run  # evaluation joined the training run
    tags = client.version_tags(registered.version)
    assert tags["lineage.config_hash"] == summary["config_hash"] != ""
    assert tags["lineage.data_version"] == str(summary["data_version"])
    assert tags["lineage.data_path"] == summary["data_path"]
    run = client.mlflow.get_run(trainer_run)
    assert run.data.metrics["eval_perplexity"] == pytest.approx(report.challenger.perplexity)

    promote(client, registered.version, "test")
    assert client.aliases()[CHAMPION] == registered.version
    mlflow.set_tracking_uri(tracking)
    champion = mlflow.pyfunc.load_model(f"models:/{client.config.model_name}@champion")
    [text] = champion.predict(["Q: sort 3 1 2 A:"], params={"max_new_tokens": 6})
    assert isinstance(text, str)
