"""Contract: `retrain_on_new_data` requests one train_and_deploy run, keyed by corpus version,
once at least `min_new_records` accepted records arrived since the champion's data version,
and otherwise says why it waits.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from ingestion.config import IngestConfig
from ingestion.lake import corpus_rows
from ingestion.pipeline import ingest
from ingestion.sample import write_landing
from orchestration.definitions import defs
from orchestration.defs.ops import RetrainPolicy
from orchestration.defs.registry import MlflowResource
from orchestration.resources import MlopsHome
from registry import RegistryConfig


def _land_and_ingest(home: Path, count: int, seed: int) -> int:
    write_landing(home / "landing" / f"batch-{seed}", count=count, seed=seed)
    report = ingest(IngestConfig(landing_dir=home / "landing", lake_dir=home / "lake"))
    return report.corpus_version


def _make_champion(home: Path, data_version: int) -> None:
    """A registered version with the lineage tag the trainer's registration writes."""
    config = RegistryConfig.resolve(home)
    Path(config.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)
    client.create_registered_model(config.model_name)
    version = client.create_model_version(config.model_name, source=str(home / "model"))
    client.set_model_version_tag(
        config.model_name, version.version, "lineage.data_version", str(data_version)
    )
    client.set_registered_model_alias(config.model_name, "champion", version.version)


def _tick(home: Path, min_new_records: int):
    sensor = defs.resolve_sensor_def("retrain_on_new_data")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance,
            resources={
                "mlops": MlopsHome(home=str(home)),
                "mlflow_registry": MlflowResource(),
                "retrain_policy": RetrainPolicy(min_new_records=min_new_records),
            },
        )
        result = sensor.evaluate_tick(context)
    return result.run_requests or [], result.skip_message or ""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_waits_for_a_champion_then_for_enough_new_records(home: Path) -> None:
    first = _land_and_ingest(home, count=600, seed=1)
    requests, skip = _tick(home, 100)
    assert requests == [] and "no champion yet" in skip

    _make_champion(home, first)
    requests, skip = _tick(home, 100)
    assert requests == [] and "current data version" in skip

    second = _land_and_ingest(home, count=600, seed=2)
    new = corpus_rows(home / "lake", second) - corpus_rows(home / "lake", first)
    assert new > 100

    requests, skip = _tick(home, new + 1)
    assert requests == [] and f"{new} new records" in skip

    requests, _ = _tick(home, new)
    assert [r.run_key for r in requests] == [f"corpus-v{second}"]
    assert requests[0].tags["mlops/new-records"] == str(new)
