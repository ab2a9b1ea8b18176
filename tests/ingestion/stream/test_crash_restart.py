"""Contract: through the real broker and the real consumer process (``python -m ingestion
consume``), 100,000 published messages reach the lake exactly once across a SIGKILL of the
consumer while it holds an unacknowledged batch and a restart of nats-server: the corpus holds
exactly the distinct valid records (what the landing-zone path makes of the same file), the
quarantine exactly the refused ones, one row per message; 0 lost, 0 stored twice. And a
consumer killed precisely between its commit and its acks leaves the lake as if it had not
crashed: the redelivered batch is recognised and stored nowhere twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from stream_broker import (  # noqa: E402
    ROOT,
    consumer_info,
    delete_streams,
    drained,
    file_path_oracle,
    nats_pid,
    publish,
    start_consumer,
    start_nats,
    stop_nats,
    stream_rows,
    unique_config,
)

from ingestion.stream import ledger  # noqa: E402

N = 100_000
BAD = ['{"text": "unterminated', '{"text": ""}', '{"text": 42}', '{"id": "no text"}']


def _write_records(path: Path, n: int) -> None:
    """n lines: every 200th broken (4 kinds), texts repeating so about 5% are duplicates."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            if i % 200 == 7:
                f.write(BAD[(i // 200) % len(BAD)] + "\n")
            else:
                record = {
                    "id": f"r{i}",
                    "source": "test/stream",
                    "text": f"record {i % (n * 19 // 20)}",
                }
                f.write(json.dumps(record) + "\n")


def _commits(home: Path) -> int:
    return ledger.read_commits(home / "lake")[0].num_rows


def _assert_exactly_once(home: Path, source: str, expected_ids: set[str], codes: list[str]):
    corpus, quarantine = stream_rows(home / "lake", source)
    ids = corpus.column("record_id").to_pylist()
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} records stored twice"
    assert set(ids) == expected_ids, (
        f"{len(expected_ids - set(ids))} records lost, {len(set(ids) - expected_ids)} unexpected"
    )
    rows = quarantine.column("source_row").to_pylist()
    assert len(rows) == len(set(rows)), "a message quarantined twice"
    assert sorted(quarantine.column("reason_code").to_pylist()) == codes


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_mid_batch_and_broker_restart_lose_nothing(tmp_path: Path, wait_until) -> None:
    config = unique_config(ack_wait_s=10.0)
    data = tmp_path / "records.jsonl"
    _write_records(data, N)
    expected_ids, expected_codes = file_path_oracle(data, tmp_path / "oracle")
    assert len(expected_codes) == N // 200 and len(expected_ids) < N - N // 200  # duplicates
    home, log = tmp_path / "home", tmp_path / "consumer.log"
    flags = ("--batch-messages", "1000", "--batch-wait", "0.5")
    consumer = None
    try:
        published = publish(config, data)
        assert published.returncode == 0, published.stderr[-2000:]
        assert json.loads(published.stdout)["published"] == N

        consumer = start_consumer(config, home, log, *flags)
        wait_until(lambda: _commits(home) >= 3, "three committed micro-batches", 300)
        wait_until(lambda: consumer_info(config).num_ack_pending > 0, "a batch in flight", 60)
        consumer.kill()
        consumer.wait(30)
        held = consumer_info(config)
        assert held.num_ack_pending > 0, "the consumer should have died holding a batch"
        assert held.num_pending > 0, "the stream should not be drained yet"

        consumer = start_consumer(config, home, log, *flags)
        before = _commits(home)
        wait_until(lambda: _commits(home) > before + 2, "commits after the restart", 300)
        lag_at_restart = consumer_info(config).num_pending
        stop_nats()
        try:
            assert nats_pid() is None
        finally:
            start_nats()
        assert lag_at_restart > 0, "the broker restart should happen while consuming"

        wait_until(
            lambda: drained(config),
            "the consumer to drain the stream",
            600,
            lambda: log.read_text()[-3000:],
        )
        assert consumer.poll() is None, "the consumer should have survived the broker restart"
        consumer.terminate()
        assert consumer.wait(60) == 0
    finally:
        if consumer is not None and consumer.poll() is None:
            consumer.kill()
        if nats_pid() is None:
            start_nats()
        delete_streams(config)
    _assert_exactly_once(home, f"nats://{config.stream}", expected_ids, expected_codes)
    commits = ledger.read_commits(home / "lake")[0].to_pylist()
    # the batch held at the SIGKILL was committed later, by the restarted consumer
    held_from = held.ack_floor.stream_seq + 1
    later = [c for c in commits if c["run_id"] != commits[0]["run_id"]]
    assert any(c["first_sequence"] <= held_from <= c["last_sequence"] for c in later)
    assert sum(c["accepted"] for c in commits) == len(expected_ids)
    assert sum(c["quarantined"] for c in commits) == len(expected_codes)


# A consumer that SIGKILLs itself right after committing a batch (corpus, quarantine and
# ledger written), before a single ack: the widest window of "committed but not acked".
KILL_AFTER_COMMIT = r"""
import asyncio, os, signal, sys
from pathlib import Path
from ingestion.stream import committer, ledger
from ingestion.stream.jetstream import JetStreamConfig, JetStreamSource

stream, subject, dlq, dlq_subject, lake_dir = sys.argv[1:6]
append = ledger.append_commit
def append_then_die(*args, **kwargs):
    append(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
ledger.append_commit = append_then_die

async def main():
    config = JetStreamConfig(stream=stream, subject=subject, dead_letter_stream=dlq,
                             dead_letter_subject=dlq_subject, ack_wait_s=2.0)
    source = await JetStreamSource.open(config)
    c = committer.MicroBatchCommitter(source, committer.CommitterConfig(Path(lake_dir), max_messages=500))
    while True:
        await c.step()
asyncio.run(main())
"""


@pytest.mark.slow
def test_crash_between_commit_and_ack_is_deduplicated(tmp_path: Path, wait_until) -> None:
    config = unique_config(ack_wait_s=2.0)
    data = tmp_path / "records.jsonl"
    _write_records(data, 2_000)
    expected_ids, expected_codes = file_path_oracle(data, tmp_path / "oracle")
    home, log = tmp_path / "home", tmp_path / "consumer.log"
    consumer = None
    try:
        assert publish(config, data).returncode == 0
        crash = subprocess.run(
            [sys.executable, "-c", KILL_AFTER_COMMIT, config.stream, config.subject,
             config.dead_letter_stream, config.dead_letter_subject, str(home / "lake")],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert crash.returncode == -9, crash.stderr[-2000:]
        first = ledger.read_commits(home / "lake")[0].to_pylist()
        assert len(first) == 1 and first[0]["accepted"] > 0
        assert consumer_info(config).num_ack_pending == 500  # committed, never acked

        consumer = start_consumer(config, home, log)

        wait_until(
            lambda: drained(config),
            "the consumer to drain the stream",
            300,
            lambda: log.read_text()[-3000:],
        )
        consumer.terminate()
        consumer.wait(60)
    finally:
        if consumer is not None and consumer.poll() is None:
            consumer.kill()
        delete_streams(config)
    _assert_exactly_once(home, f"nats://{config.stream}", expected_ids, expected_codes)
    commits = ledger.read_commits(home / "lake")[0].to_pylist()
    redelivered = [c for c in commits[1:] if c["first_sequence"] == first[0]["first_sequence"]]
    assert redelivered, "the committed batch should have been delivered again"
    # all 500 of the first batch count as duplicates the second time (the corpus has its
    # records, the quarantine its sequences), and each record was accepted exactly once
    assert redelivered[0]["duplicates"] >= 500
    assert sum(c["accepted"] for c in commits) == len(expected_ids)
    assert sum(c["quarantined"] for c in commits) == len(expected_codes)
