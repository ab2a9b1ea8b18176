"""Contract: the stream consumer and the landing-zone ingest share the corpus safely. A record
a file ingest committed after the consumer started is a duplicate for the consumer (its known
ids are re-read when another writer committed), and while another writer holds the lake's
writer lock the consumer commits and acknowledges nothing, then commits once it is released.
The broker is replaced by an in-memory source (the collaborator under the committer)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from ingestion import lake
from ingestion.pipeline import IngestConfig, ingest
from ingestion.stream.committer import CommitterConfig, MicroBatchCommitter
from ingestion.stream.source import Delivery, Lag
from ingestion.writer_lock import corpus_writer


class MemorySource:
    name = "memory://test"
    max_deliver = 5

    def __init__(self, texts: list[str]) -> None:
        self.queue = [
            Delivery(json.dumps({"text": t}).encode(), i + 1, 1) for i, t in enumerate(texts)
        ]
        self.acked: list[int] = []
        self.kept_alive = 0

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        batch, self.queue = self.queue[:max_messages], self.queue[max_messages:]
        return batch

    async def ack(self, deliveries):
        self.acked += [d.sequence for d in deliveries]

    async def keep_alive(self, deliveries):
        self.kept_alive += 1

    async def retry(self, delivery, delay_s):
        raise AssertionError("nothing should fail here")

    async def dead_letter(self, delivery, reason):
        raise AssertionError("nothing should be dead-lettered here")

    async def lag(self) -> Lag:
        return Lag(len(self.queue), 0)

    async def close(self) -> None:
        pass


def test_records_a_file_ingest_committed_meanwhile_are_duplicates(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    source = MemorySource(["shared text", "only streamed"])
    committer = MicroBatchCommitter(source, CommitterConfig(lake_dir, max_wait_s=0.1))
    committer.warm_up()  # reads the (empty) corpus now
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.jsonl").write_text(json.dumps({"text": "shared text"}) + "\n")
    assert ingest(IngestConfig(landing, lake_dir)).accepted == 1

    report = asyncio.run(committer.step())
    assert (report.accepted, report.duplicates) == (1, 1)
    texts = lake.read_corpus(lake_dir, columns=["text"]).column(0).to_pylist()
    assert sorted(texts) == ["only streamed", "shared text"]


def test_waits_for_the_writer_lock_without_acking(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    source = MemorySource(["a", "b"])
    committer = MicroBatchCommitter(
        source, CommitterConfig(lake_dir, max_wait_s=0.1, retry_base_s=0.1, retry_max_s=0.2)
    )
    committer.warm_up()
    held, release = threading.Event(), threading.Event()
    seen: dict = {}

    def other_writer():
        with corpus_writer(lake_dir):
            held.set()
            release.wait(30)
            seen["acked_while_locked"] = list(source.acked)
            seen["version_while_locked"] = lake.corpus_version(lake_dir)

    thread = threading.Thread(target=other_writer)
    thread.start()
    held.wait(10)
    threading.Timer(7.0, release.set).start()  # longer than one lock wait (5 s)
    report = asyncio.run(committer.step())
    thread.join(10)
    assert seen == {"acked_while_locked": [], "version_while_locked": None}
    assert report.lake_attempts >= 2 and source.kept_alive >= 1
    assert report.accepted == 2 and source.acked == [1, 2]
