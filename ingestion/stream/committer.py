"""The micro-batch committer: pull a batch, commit it to the lake, then acknowledge it.

One step: collect up to ``max_messages`` deliveries or wait ``max_wait_s``, whichever comes
first; build the corpus and quarantine rows (``batch.build_batch``: the file path's record
contract); append the corpus rows in ONE Delta commit, the quarantine rows in one more, the
ledger row last; only then ack. Consequences:

- A crash before the acks means redelivery; the redelivered records are recognised in the
  tables themselves (``ledger`` explains how) and nothing is stored twice.
- While the lake cannot be written nothing is acked: the commit is retried with capped
  exponential backoff, and the held messages are kept in progress at the broker meanwhile so
  they are neither redelivered nor counted as failed deliveries. No new batch is pulled, so
  the backlog stays in the broker (back-pressure), never in memory.
- A message whose decoding raises is left out of the batch and redelivered later with a
  growing delay; on its last allowed delivery it is dead-lettered instead, and a quarantine
  row with the error is committed with the batch. It never blocks the messages behind it.
- A message that kills the consumer itself (a crash, an out-of-memory kill, a hang past the
  ack wait) is never settled, so it comes back with a growing delivery count. Redelivered
  messages are taken in ever smaller batches (``suspect_batch_size``): by its last allowed
  delivery such a message is processed alone, so only it can exhaust the limit, and one that
  arrives beyond the limit is dead-lettered and quarantined before anything touches its bytes.
  Counting deliveries works however the process died, with no listener that must be up at the
  right moment (the broker's MAX_DELIVERIES advisory is a plain event, lost when no consumer
  is running, which is exactly the case here).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from ingestion import lake
from ingestion.parse import parse_json_line
from ingestion.stream import ledger
from ingestion.stream.batch import (
    BatchRules,
    Decoder,
    build_batch,
    dead_letter_rows,
    failure_reason,
    unfinished_reason,
)
from ingestion.stream.jetstream import MAX_ACK_PENDING
from ingestion.stream.metrics import StreamMetrics
from ingestion.stream.source import Delivery, StreamSource
from ingestion.writer_lock import corpus_writer

log = logging.getLogger(__name__)
LOCK_WAIT_S = 5.0


@dataclass(frozen=True)
class CommitterConfig:
    lake_dir: Path
    # per micro-batch: the expectation suite costs ~0.5 s a batch whatever its size, so small
    # batches cap throughput (measured: 1,000 -> ~630 records/s, 5,000 -> ~1,600)
    max_messages: int = 5000
    max_wait_s: float = 1.0  # longest a batch waits to fill
    max_text_chars: int = 100_000
    excerpt_chars: int = 512
    retry_base_s: float = 0.5  # first wait after a failed lake write, doubled each time
    retry_max_s: float = 15.0  # cap; must stay below the broker's ack wait
    redeliver_base_s: float = 1.0  # delay before a failed message comes back, doubled
    redeliver_max_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lake_dir", Path(self.lake_dir))
        if not 1 <= self.max_messages <= MAX_ACK_PENDING:
            raise ValueError(
                f"CommitterConfig.max_messages must be within 1..{MAX_ACK_PENDING} (what the "
                f"broker lets a consumer hold unacknowledged), got {self.max_messages}"
            )
        for name in ("max_wait_s", "retry_base_s", "retry_max_s", "redeliver_base_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CommitterConfig.{name} must be positive")


@dataclass(frozen=True)
class CommitReport:
    messages: int
    accepted: int
    duplicates: int
    quarantined: int
    dead_lettered: int
    retried: int
    corpus_version: int | None
    lake_attempts: int


def suspect_batch_size(attempt: int, max_deliver: int, max_messages: int) -> int:
    """How many messages to take in a batch that starts with a delivery on its ``attempt``-th
    delivery. A redelivered message may be one that killed the consumer, and a crash bumps
    the delivery count of every message fetched with it: the batch shrinks fourfold with each
    redelivery and holds one message from the last allowed delivery on, so an innocent
    neighbour is never taken along to the limit."""
    if attempt <= 1:
        return max_messages
    if attempt >= max_deliver:
        return 1
    return max(1, max_messages // 4 ** (attempt - 1))


class MicroBatchCommitter:
    def __init__(
        self,
        source: StreamSource,
        config: CommitterConfig,
        run_id: str | None = None,
        decoder: Decoder = parse_json_line,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.source = source
        self.config = config
        self.run_id = run_id or uuid.uuid4().hex
        self.decoder = decoder
        self.metrics = metrics or StreamMetrics(source.name)
        self.rules = BatchRules(source.name, config.max_text_chars, config.excerpt_chars)
        self._ids: lake.IdSet | None = None
        self._ids_version: int | None = None  # the corpus version ``_ids`` reflects
        self._suite = None

    @property
    def corpus_path(self) -> Path:
        return self.config.lake_dir / "corpus"

    @property
    def quarantine_path(self) -> Path:
        return self.config.lake_dir / "quarantine"

    def warm_up(self) -> None:
        """Load the corpus record ids and build the expectation suite now (seconds), rather
        than in the first batch's latency."""
        self._known_ids()
        self._corpus_suite()

    def _known_ids(self) -> lake.IdSet:
        """The corpus record ids, re-read when another writer (a landing-zone ingest) has
        committed since they were read."""
        version = lake.table_version(self.corpus_path)
        if self._ids is None or version != self._ids_version:
            self._ids = lake.IdSet.from_corpus(self.corpus_path)
            self._ids_version = version
        return self._ids

    def _corpus_suite(self):
        if self._suite is None:
            from ingestion.validation import CorpusSuite  # imports Great Expectations: seconds

            self._suite = CorpusSuite(self.config.max_text_chars)
        return self._suite

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Commit micro-batches until ``stop`` is set."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self.step()

    async def step(self) -> CommitReport | None:
        """One micro-batch; None when nothing arrived within ``max_wait_s``."""
        deliveries = await self._collect()
        if not deliveries:
            await self._update_lag()
            return None
        report = await self._commit_with_retry(deliveries)
        await self._update_lag()
        return report

    async def _collect(self) -> list[Delivery]:
        config, got = self.config, []
        deadline = time.monotonic() + config.max_wait_s
        limit = config.max_messages
        while len(got) < limit:
            left = deadline - time.monotonic()
            if left <= 0.01:
                break
            try:
                # the first message alone: if it is a redelivery, the batch is kept small
                # (see ``suspect_batch_size``) before more messages are taken along with it
                got += await self.source.fetch(limit - len(got) if got else 1, left)
                if got and len(got) == 1:
                    limit = suspect_batch_size(
                        got[0].attempt, self.source.max_deliver, config.max_messages
                    )
            except Exception as exc:  # broker unreachable or restarting: wait it out
                log.warning("fetching from %s failed (%s); retrying", self.source.name, exc)
                await asyncio.sleep(min(left, 0.5))
        return got

    async def _commit_with_retry(self, deliveries: list[Delivery]) -> CommitReport:
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                tables, corpus_version = self._commit(deliveries)
                break
            except Exception as exc:
                # Anything may have been written before the failure: forget what we believe is
                # stored; the next attempt re-reads it and skips what is already there.
                self._ids = None
                delay = min(self.config.retry_base_s * 2 ** (attempt - 1), self.config.retry_max_s)
                self.metrics.commit_failures.inc()
                self.metrics.lake_unavailable.set(1)
                log.warning(
                    "writing a micro-batch of %d messages to %s failed (attempt %d: %s); "
                    "nothing acknowledged, retrying in %.1fs",
                    len(deliveries),
                    self.config.lake_dir,
                    attempt,
                    exc,
                    delay,
                )
                await self._keep_alive(deliveries)
                await asyncio.sleep(delay)
        self.metrics.lake_unavailable.set(0)
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        return await self._settle(deliveries, tables, corpus_version, attempt)

    def _commit(self, deliveries: list[Delivery]):
        # a landing-zone ingest waiting for the lock only delays this batch: the timeout makes
        # it a failed attempt, retried with backoff while the batch is kept alive
        with corpus_writer(self.config.lake_dir, timeout_s=LOCK_WAIT_S):
            return self._commit_locked(deliveries)

    def _commit_locked(self, deliveries: list[Delivery]):
        now = datetime.now(UTC)
        ids, suite = self._known_ids(), self._corpus_suite()
        sequences = [d.sequence for d in deliveries]
        already = ledger.quarantined_sequences(self.quarantine_path, self.source.name, sequences)
        limit = self.source.max_deliver
        # beyond the limit: every earlier delivery ended without a settlement (the consumer
        # died or stalled on it), so its bytes are not decoded again
        exhausted = [d for d in deliveries if d.attempt > limit]
        tables = build_batch(
            [d for d in deliveries if d.attempt <= limit],
            self.rules,
            ids,
            suite,
            self.run_id,
            now,
            already,
            self.decoder,
        )
        last = [(d, failure_reason(d, e)) for d, e in tables.failed if d.attempt >= limit]
        last += [(d, unfinished_reason(d)) for d in exhausted]
        tables.failed += [(d, reason) for d, reason in last if d.attempt > limit]
        given_up = dead_letter_rows(
            [(d, r) for d, r in last if d.sequence not in already], self.rules, self.run_id, now
        )
        quarantine = pa.concat_tables([tables.quarantine, given_up])
        corpus_version = lake.table_version(self.corpus_path)
        if tables.corpus.num_rows:
            corpus_version = lake.append(self.corpus_path, tables.corpus, lake.CORPUS_SCHEMA)
            self._ids_version = corpus_version
        quarantine_version = None
        if quarantine.num_rows:
            quarantine_version = lake.append(
                self.quarantine_path, quarantine, lake.QUARANTINE_SCHEMA
            )
        ids.add(tables.digests)
        published = [d.published_at for d in deliveries if d.published_at is not None]
        counts = {
            "accepted": tables.accepted,
            "duplicates": tables.duplicates,
            "quarantined": tables.quarantined,
            "dead_lettered": len(last),
            "retried": len(tables.failed) - len(last),
        }
        ledger.append_commit(
            self.config.lake_dir,
            ledger.commit_row(
                self.source.name,
                self.run_id,
                sequences,
                counts,
                corpus_version,
                quarantine_version,
                min(published) if published else None,
                datetime.now(UTC),
            ),
        )
        return tables, corpus_version

    async def _settle(self, deliveries, tables, corpus_version, attempts) -> CommitReport:
        """After the commit: dead-letter, schedule redelivery, acknowledge the rest."""
        failed = {d.sequence: (d, e) for d, e in tables.failed}  # exhausted ones included
        dead = retried = 0
        for delivery, error in failed.values():
            try:
                if delivery.attempt >= self.source.max_deliver:
                    await self.source.dead_letter(delivery, error)
                    dead += 1
                else:
                    delay = min(
                        self.config.redeliver_base_s * 2 ** (delivery.attempt - 1),
                        self.config.redeliver_max_s,
                    )
                    await self.source.retry(delivery, delay)
                    retried += 1
            except Exception as exc:  # the broker will redeliver it; that is safe
                log.warning("could not settle failed message %d: %s", delivery.sequence, exc)
        done = [d for d in deliveries if d.sequence not in failed]
        try:
            await self.source.ack(done)
        except Exception as exc:
            log.warning(
                "acknowledging %d committed messages failed (%s); they will be redelivered "
                "and recognised as already stored",
                len(done),
                exc,
            )
        log.info(
            "committed messages %d..%d: %d accepted, %d duplicates, %d quarantined, "
            "%d dead-lettered, %d to retry; corpus version %s",
            min(d.sequence for d in deliveries),
            max(d.sequence for d in deliveries),
            tables.accepted,
            tables.duplicates,
            tables.quarantined,
            dead,
            retried,
            corpus_version,
        )
        m = self.metrics
        m.commits.inc()
        m.records("accepted", tables.accepted)
        m.records("duplicate", tables.duplicates)
        m.records("quarantined", tables.quarantined)
        m.records("dead_lettered", dead)
        m.records("retried", retried)
        return CommitReport(
            len(deliveries),
            tables.accepted,
            tables.duplicates,
            tables.quarantined,
            dead,
            retried,
            corpus_version,
            attempts,
        )

    async def _keep_alive(self, deliveries: list[Delivery]) -> None:
        try:
            await self.source.keep_alive(deliveries)
        except Exception as exc:
            log.warning("could not extend the ack deadline of held messages: %s", exc)

    async def _update_lag(self) -> None:
        try:
            self.metrics.lag.set((await self.source.lag()).total)
        except Exception as exc:
            log.debug("lag unavailable: %s", exc)
