"""Contract: with no one calling anything by hand, what the Dagster UI shows of the stream is
in the instance: under the real ``dagster-daemon``, every micro-batch the real consumer process
committed is a ``corpus`` materialization with the commit's data version and counts, and the
consumer's lag is recorded as ``stream_consumer_lag`` check evaluations."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingestion" / "stream"))

from stream_broker import (  # noqa: E402
    delete_streams,
    drained,
    publish,
    start_consumer,
    unique_config,
)

from ingestion.stream import ledger  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))


def test_daemon_records_each_commit_and_the_lag(stack, tmp_path: Path, wait_until) -> None:
    config = unique_config()
    data = tmp_path / "records.jsonl"
    lines = [json.dumps({"text": f"streamed {i}"}) for i in range(1500)] + ["broken {"]
    data.write_text("\n".join(lines) + "\n")
    env = {**stack.env, "MLOPS_NATS_STREAM": config.stream, "MLOPS_STREAM_SENSOR_INTERVAL_S": "2"}
    consumer_log, daemon_log = tmp_path / "consumer.log", tmp_path / "daemon.log"
    consumer = daemon = None
    instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
    try:
        assert publish(config, data).returncode == 0
        consumer = start_consumer(config, stack.home, consumer_log, "--batch-messages", "500")
        wait_until(lambda: drained(config), "the stream committed", 300)
        commits = ledger.read_commits(stack.lake)[0].to_pylist()
        assert len(commits) >= 4

        with daemon_log.open("w") as out:
            daemon = subprocess.Popen(
                [DAEMON, "run", "-w", "workspace.yaml"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def materializations():
            records = instance.fetch_materializations(dg.AssetKey("corpus"), limit=100).records
            return records if len(records) >= len(commits) else None

        records = wait_until(
            materializations, "corpus materializations", 240, lambda: daemon_log.read_text()[-4000:]
        )
        check = dg.AssetCheckKey(dg.AssetKey("corpus"), "stream_consumer_lag")
        lag = wait_until(
            lambda: instance.event_log_storage.get_asset_check_execution_history(check, limit=1),
            "a lag check evaluation",
            120,
        )
    finally:
        instance.dispose()
        for process in (daemon, consumer):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        delete_streams(config)
    events = sorted(records, key=lambda r: r.timestamp)
    assert len(events) == len(commits), "each commit reported once"
    for event, commit in zip(events, commits, strict=True):
        m = event.asset_materialization
        assert m.tags["dagster/data_version"] == str(commit["corpus_version"])
        assert m.metadata["accepted"].value == commit["accepted"]
        assert m.metadata["first_sequence"].value == commit["first_sequence"]
    assert sum(e.asset_materialization.metadata["accepted"].value for e in events) == 1500
    assert sum(e.asset_materialization.metadata["quarantined"].value for e in events) == 1
    evaluation = lag[0].event.dagster_event.event_specific_data
    assert evaluation.passed and evaluation.metadata["lag_messages"].value == 0
