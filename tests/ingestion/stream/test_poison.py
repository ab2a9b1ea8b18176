"""Contract: a message whose processing fails is redelivered with a delay and, on its N-th
delivery, lands in the dead-letter stream (its bytes, with the reason, stream sequence and
delivery count in headers) and in the quarantine (reason code ``dead_lettered``, the error in
the reason); the messages behind it are committed meanwhile, so it never blocks the stream.
Real broker; the consumer runs in-process so that its decoder can fail on one record, the
way a decoding bug fails on an input nobody foresaw."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from stream_broker import consumer_info, dead_letters, delete_streams, unique_config  # noqa: E402

from ingestion import lake  # noqa: E402
from ingestion.parse import parse_json_line  # noqa: E402
from ingestion.stream import ledger  # noqa: E402
from ingestion.stream.committer import CommitterConfig, MicroBatchCommitter  # noqa: E402
from ingestion.stream.jetstream import JetStreamSource  # noqa: E402

MAX_DELIVER = 3
POISON = json.dumps({"text": "this record trips the decoder"}).encode()


def decoder_with_a_bug(data: bytes):
    if b"trips the decoder" in data:
        raise ValueError("unsupported escape in field 'text'")
    return parse_json_line(data)


async def _consume(config, lake_dir: Path) -> list:
    source = await JetStreamSource.open(config)
    try:
        js = source._js
        for i in range(60):
            body = POISON if i == 10 else json.dumps({"text": f"good record {i}"}).encode()
            await js.publish(config.subject, body)
        committer = MicroBatchCommitter(
            source,
            CommitterConfig(lake_dir, max_messages=20, max_wait_s=0.3, redeliver_base_s=0.2),
            decoder=decoder_with_a_bug,
        )
        reports = []
        for _ in range(200):
            report = await committer.step()
            if report is not None:
                reports.append(report)
            lag = await source.lag()
            if lag.total == 0 and sum(r.dead_lettered for r in reports):
                break
        return reports
    finally:
        await source.close()


def test_poison_message_is_dead_lettered_after_max_deliveries(tmp_path: Path) -> None:
    config = unique_config(max_deliver=MAX_DELIVER, ack_wait_s=5.0)
    try:
        reports = asyncio.run(asyncio.wait_for(_consume(config, tmp_path / "lake"), 120))
        info = consumer_info(config)
        letters = dead_letters(config)
    finally:
        delete_streams(config)
    assert info.num_pending == 0 and info.num_ack_pending == 0
    assert sum(r.retried for r in reports) == MAX_DELIVER - 1
    assert sum(r.dead_lettered for r in reports) == 1

    [(data, headers)] = letters
    assert data == POISON
    assert headers["Mlops-Deliveries"] == str(MAX_DELIVER)
    assert headers["Mlops-Sequence"] == "11"
    assert "unsupported escape" in headers["Mlops-Reason"]

    corpus = lake.read_corpus(tmp_path / "lake")
    assert corpus.num_rows == 59  # every good record, none held back by the poison
    quarantine = lake.read_table(tmp_path / "lake" / "quarantine").to_pylist()
    assert [(q["source_row"], q["reason_code"]) for q in quarantine] == [(11, "dead_lettered")]
    assert "unsupported escape" in quarantine[0]["reason"]

    commits = ledger.read_commits(tmp_path / "lake")[0].to_pylist()
    # the batch holding the poison committed its other 19 records at once
    assert commits[0]["first_sequence"] == 1 and commits[0]["accepted"] == 19
    assert commits[0]["retried"] == 1
