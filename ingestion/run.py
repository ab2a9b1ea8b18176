"""State of one ingest run, and the processing of one file within it.

``RunState`` holds what a run learns once and shares across files: the corpus record ids
(loaded lazily, compact), the expectation suite (built once), the ledger's fingerprints and
the validation tally. ``FileRun`` takes one file's raw batches through screening, dedupe and
the suite, streams the accepted batches into a single corpus commit, then writes the file's
quarantine rows and its ledger row, in the order the pipeline module explains.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from itertools import chain

import numpy as np
import pyarrow as pa

from ingestion import lake
from ingestion.config import IngestConfig
from ingestion.contract import ReasonCode
from ingestion.parse import RawBatch, Refusals, excerpt, screen
from ingestion.quarantine import QuarantineSpool, quarantine_table
from ingestion.report import FileReport, ValidationSummary
from ingestion.validation import BatchVerdict, CorpusSuite

_TS = lake.CORPUS_SCHEMA.field("ingested_at").type


def first_occurrences(digests: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each digest: a stable sort on the 8-byte prefix, then a
    full compare of neighbours (np.unique, exact on all 32 bytes, if two prefixes collide)."""
    prefixes = np.frombuffer(digests.tobytes(), ">u8").reshape(-1, 4)[:, 0]
    order = np.argsort(prefixes, kind="stable")
    ordered, sorted_digests = prefixes[order], digests[order]
    same_prefix = np.flatnonzero(ordered[1:] == ordered[:-1])
    same = sorted_digests[same_prefix + 1] == sorted_digests[same_prefix]
    if not same.all():  # two different digests share a prefix: astronomically rare
        keep = np.zeros(len(digests), bool)
        keep[np.unique(digests, return_index=True)[1]] = True
        return keep
    first = np.ones(len(digests), bool)
    first[same_prefix + 1] = False
    keep = np.empty(len(digests), bool)
    keep[order] = first
    return keep


@dataclass
class RunState:
    config: IngestConfig
    run_id: str
    started_at: datetime
    processed: set[str] = field(default_factory=set)  # fingerprints finished in this run
    batches: int = 0
    rows_validated: int = 0
    failed_batches: int = 0
    failed_expectations: list[str] = field(default_factory=list)

    @cached_property
    def ids(self) -> lake.IdSet:
        return lake.IdSet.from_corpus(self.config.corpus_path)

    @cached_property
    def suite(self) -> CorpusSuite:
        return CorpusSuite(self.config.max_text_chars)

    @cached_property
    def ledgered(self) -> set[str]:
        return set(lake.read_ledger(self.config.ledger_path).column("fingerprint").to_pylist())

    @cached_property
    def quarantined_fps(self) -> set[str]:
        return lake.quarantined_fingerprints(self.config.quarantine_path)

    def is_known(self, fingerprint: str) -> bool:
        return fingerprint in self.processed or fingerprint in self.ledgered

    def validate(self, table: pa.Table) -> BatchVerdict:
        verdict = self.suite.validate(table)
        self.batches += 1
        self.rows_validated += table.num_rows
        if not verdict.success:
            self.failed_batches += 1
            for name in verdict.failed_expectations:
                if name not in self.failed_expectations:
                    self.failed_expectations.append(name)
        return verdict

    def validation_summary(self) -> ValidationSummary:
        return ValidationSummary(
            success=self.failed_batches == 0,
            batches=self.batches,
            rows_validated=self.rows_validated,
            failed_expectations=list(self.failed_expectations),
        )

    def forget_quarantine_of(self, fingerprint: str | None, source_file: str) -> None:
        """Delete quarantine rows an interrupted earlier attempt left for this file."""
        if fingerprint is None or fingerprint in self.quarantined_fps:
            lake.delete_quarantine_of(self.config.quarantine_path, fingerprint, source_file)
            self.quarantined_fps.discard(fingerprint)

    def record(
        self, report: FileReport, stat_key: tuple[int, int], corpus_version: int | None
    ) -> None:
        """Append the ledger row: the last write for a file, after which it is done."""
        row = {
            "fingerprint": report.fingerprint,
            "source_file": report.source_file,
            "status": report.status,
            "size": stat_key[0],
            "mtime_ns": stat_key[1],
            "records_read": report.records_read,
            "accepted": report.accepted,
            "duplicates": report.duplicates,
            "quarantined": report.quarantined,
            "reason_code": report.reason_code,
            "reason": report.reason,
            "corpus_version": corpus_version,
            "ingested_at": self.started_at,
            "run_id": self.run_id,
        }
        table = pa.Table.from_pylist([row], schema=lake.LEDGER_SCHEMA)
        lake.append(self.config.ledger_path, table, lake.LEDGER_SCHEMA)
        self.processed.add(report.fingerprint)

    def already_ingested(self, source_file: str, fingerprint: str) -> FileReport:
        return FileReport(source_file, fingerprint, "already_ingested", 0, 0, 0, 0, None)

    def reject(
        self,
        source_file: str,
        fingerprint: str | None,
        code: ReasonCode,
        reason: str,
        stat_key: tuple[int, int] | None = None,
        excerpt: str = "",
    ) -> FileReport:
        """Refuse a whole file with one quarantine row. It enters the ledger (and is not retried
        until its content changes) when it has an identity and its content is the problem."""
        self.forget_quarantine_of(fingerprint, source_file)
        refused = Refusals()
        refused.add(None, code, reason, excerpt)
        table = quarantine_table(source_file, fingerprint, refused, self.run_id, self.started_at)
        lake.append(self.config.quarantine_path, table, lake.QUARANTINE_SCHEMA)
        report = FileReport(source_file, fingerprint, "rejected", 0, 0, 0, 0, reason, str(code))
        if fingerprint is not None and stat_key is not None:
            self.record(report, stat_key, lake.table_version(self.config.corpus_path))
        return report


class FileRun:
    """One file through screen -> dedupe -> suite -> corpus commit -> quarantine -> ledger."""

    def __init__(
        self, state: RunState, source_file: str, fingerprint: str, stat_key: tuple[int, int]
    ) -> None:
        self.state = state
        self.source_file = source_file
        self.fingerprint = fingerprint
        self.stat_key = stat_key
        self.read = self.accepted = self.duplicates = self.quarantined = 0
        self.pending = lake.IdSet()  # ids of this file's accepted rows, not yet committed
        self.spool = QuarantineSpool(state.config.lake_dir, state.config.batch_rows)
        self.failure: BaseException | None = None

    def process(self, batches: Iterable[RawBatch]) -> FileReport:
        """Raises ``FileRejected`` (or an Arrow/OS error) if the file cannot be read through;
        then no record of it was committed and its spooled refusals are discarded."""
        state, config = self.state, self.state.config
        state.forget_quarantine_of(self.fingerprint, self.source_file)
        with self.spool:
            stream = self._corpus_batches(batches)
            first = next(stream, None)
            version = lake.table_version(config.corpus_path)
            if first is not None:
                try:
                    version = lake.append_stream(
                        config.corpus_path, chain([first], stream), lake.CORPUS_SCHEMA
                    )
                except Exception:
                    # the Delta writer wraps errors raised by the stream: surface the reader's own
                    if self.failure is not None:
                        raise self.failure from None
                    raise
            state.ids.merge(self.pending)
            if self.spool.commit(config.quarantine_path) is not None:
                state.quarantined_fps.add(self.fingerprint)
        report = FileReport(
            self.source_file,
            self.fingerprint,
            "ingested",
            self.read,
            self.accepted,
            self.duplicates,
            self.quarantined,
            None,
        )
        state.record(report, self.stat_key, version)
        return report

    def _corpus_batches(self, batches: Iterable[RawBatch]) -> Iterator[pa.Table]:
        try:
            yield from self._screened(batches)
        except BaseException as exc:
            self.failure = exc
            raise

    def _screened(self, batches: Iterable[RawBatch]) -> Iterator[pa.Table]:
        config = self.state.config
        buffer: list[pa.Table] = []
        rows = 0
        for raw in batches:
            accepted, refused = screen(raw, config.max_text_chars, config.excerpt_chars)
            self.read += accepted.num_rows + len(refused)
            self._refuse(refused)
            if accepted.num_rows:
                buffer.append(accepted)
                rows += accepted.num_rows
            while rows >= config.batch_rows:
                table = pa.concat_tables(buffer)
                rest = table.slice(config.batch_rows)
                buffer, rows = ([rest] if rest.num_rows else []), rest.num_rows
                yield from self._check(table.slice(0, config.batch_rows))
        if rows:
            yield from self._check(pa.concat_tables(buffer))

    def _check(self, table: pa.Table) -> Iterator[pa.Table]:
        """Drop duplicates, run the suite; yields the batch in corpus shape if it passed."""
        state = self.state
        digests = lake.digests(table.column("record_id"))
        keep = first_occurrences(digests)
        keep &= ~state.ids.contains(digests) & ~self.pending.contains(digests)
        self.duplicates += int(len(keep) - keep.sum())
        table, digests = table.filter(pa.array(keep)), digests[keep]
        if table.num_rows == 0:
            return
        verdict = state.validate(table)
        if not verdict.success:
            self._refuse_batch(table, verdict.failed_expectations)
            return
        self.pending.add(digests)
        self.accepted += table.num_rows
        n = table.num_rows
        columns = {name: table.column(name) for name in table.column_names} | {
            "source_file": pa.array([self.source_file] * n, pa.string()),
            "source_fingerprint": pa.array([self.fingerprint] * n, pa.string()),
            "ingested_at": pa.array([state.started_at] * n, _TS),
        }
        yield pa.table({name: columns[name] for name in lake.CORPUS_SCHEMA.names})

    def _refuse_batch(self, table: pa.Table, failed: list[str]) -> None:
        reason = (
            f"its batch failed the corpus expectations ({'; '.join(failed)}) and was not "
            "committed; fix the data or the rule, then land the file again"
        )
        refused = Refusals()
        limit = self.state.config.excerpt_chars
        rows, texts = table.column("source_row").to_pylist(), table.column("text").to_pylist()
        for row, text in zip(rows, texts, strict=True):
            refused.add(row, ReasonCode.EXPECTATION_FAILED, reason, excerpt(text or "", limit))
        self._refuse(refused)

    def _refuse(self, refused: Refusals) -> None:
        if len(refused):
            self.quarantined += len(refused)
            state = self.state
            self.spool.add(
                quarantine_table(
                    self.source_file, self.fingerprint, refused, state.run_id, state.started_at
                )
            )
