"""Contract: Dagster observes the stream consumer. ``stream_commits_sensor`` reports each
micro-batch commit once, as a ``corpus`` materialization carrying the corpus Delta version as
its data version and the batch's counts, and the consumer's lag (asked of the real broker) as
the ``stream_consumer_lag`` check, which warns past its threshold; ``retrain_on_new_data``
counts streamed records as it counts landed ones."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingestion" / "stream"))

from stream_broker import delete_streams, unique_config  # noqa: E402

from ingestion import lake  # noqa: E402
from ingestion.stream import ledger  # noqa: E402
from ingestion.stream.committer import CommitterConfig, MicroBatchCommitter  # noqa: E402
from ingestion.stream.jetstream import JetStreamSource  # noqa: E402
from orchestration.definitions import defs  # noqa: E402
from orchestration.defs.data.stream import StreamResource  # noqa: E402
from orchestration.resources import MlopsHome  # noqa: E402


async def _publish_and_commit(config, lake_dir: Path, texts: list[str], batch: int, commit: bool):
    source = await JetStreamSource.open(config)
    try:
        for text in texts:
            await source._js.publish(config.subject, json.dumps({"text": text}).encode())
        if commit:
            committer = MicroBatchCommitter(source, CommitterConfig(lake_dir, max_messages=batch))
            while (await source.lag()).total:
                await committer.step()
    finally:
        await source.close()


def _tick(home: Path, config, cursor: str | None, threshold: int = 100):
    sensor = defs.resolve_sensor_def("stream_commits_sensor")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={
                "mlops": MlopsHome(home=str(home)),
                "stream": StreamResource(
                    stream=config.stream, durable=config.durable, lag_warn_messages=threshold
                ),
            },
        )
        return sensor.evaluate_tick(context)


@pytest.fixture
def config():
    config = unique_config()
    yield config
    delete_streams(config)


def test_each_commit_is_a_materialization_and_lag_is_a_check(tmp_path: Path, config) -> None:
    lake_dir = tmp_path / "lake"
    assert _tick(tmp_path, config, None).skip_message.startswith("no stream commits yet")

    texts = [f"streamed {i}" for i in range(300)] + ["streamed 0", ""]
    asyncio.run(_publish_and_commit(config, lake_dir, texts, 100, commit=True))
    commits = ledger.read_commits(lake_dir)[0].to_pylist()
    assert len(commits) == 4

    result = _tick(tmp_path, config, None)
    materializations = [e for e in result.asset_events if isinstance(e, dg.AssetMaterialization)]
    assert [m.asset_key for m in materializations] == [dg.AssetKey("corpus")] * 4
    versions = [m.tags["dagster/data_version"] for m in materializations]
    assert versions == [str(c["corpus_version"]) for c in commits]
    assert versions[-1] == str(lake.corpus_version(lake_dir))
    counts = [
        (m.metadata["accepted"].value, m.metadata["quarantined"].value) for m in materializations
    ]
    assert sum(a for a, _ in counts) == 300 and sum(q for _, q in counts) == 1
    [lag] = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert lag.check_name == "stream_consumer_lag" and lag.passed
    assert lag.metadata["lag_messages"].value == 0

    again = _tick(tmp_path, config, result.cursor)  # nothing new: no materialization twice
    assert not [e for e in again.asset_events if isinstance(e, dg.AssetMaterialization)]

    # published but not consumed: lag past the threshold is a warning
    asyncio.run(_publish_and_commit(config, lake_dir, [f"late {i}" for i in range(30)], 100, False))
    behind = _tick(tmp_path, config, result.cursor, threshold=10)
    [lag] = [e for e in behind.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert not lag.passed and lag.severity == dg.AssetCheckSeverity.WARN
    assert lag.metadata["lag_messages"].value == 30


def test_lag_check_says_when_the_broker_does_not_answer(tmp_path: Path) -> None:
    from orchestration.defs.data.stream import lag_evaluation

    evaluation = lag_evaluation(StreamResource(url="nats://127.0.0.1:9", timeout_s=1))
    assert not evaluation.passed and "did not answer" in evaluation.description


def test_retrain_sensor_counts_streamed_records(
    tmp_path: Path, config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from orchestration.defs.ops import RetrainPolicy
    from orchestration.defs.registry import MlflowResource
    from registry import RegistryConfig

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lake_dir = tmp_path / "lake"
    asyncio.run(_publish_and_commit(config, lake_dir, [f"a {i}" for i in range(50)], 50, True))
    trained_on = lake.corpus_version(lake_dir)
    registry = RegistryConfig.resolve(tmp_path)
    Path(registry.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    client.create_registered_model(registry.model_name)
    version = client.create_model_version(registry.model_name, source=str(tmp_path / "model"))
    client.set_model_version_tag(
        registry.model_name, version.version, "lineage.data_version", str(trained_on)
    )
    client.set_registered_model_alias(registry.model_name, "champion", version.version)

    asyncio.run(_publish_and_commit(config, lake_dir, [f"b {i}" for i in range(250)], 100, True))
    sensor = defs.resolve_sensor_def("retrain_on_new_data")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance,
            resources={
                "mlops": MlopsHome(home=str(tmp_path)),
                "mlflow_registry": MlflowResource(),
                "retrain_policy": RetrainPolicy(min_new_records=250),
            },
        )
        result = sensor.evaluate_tick(context)
    assert [r.run_key for r in result.run_requests] == [f"corpus-v{lake.corpus_version(lake_dir)}"]
    assert result.run_requests[0].tags["mlops/new-records"] == "250"
