"""The stream's commit ledger, and the look-up that recognises a redelivered batch.

``lake/stream_commits`` is a Delta table with one row per committed micro-batch: its sequence
range, its counts, and the corpus and quarantine versions it produced. It is written after
the batch's corpus and quarantine commits and before the acks, and it is what the orchestrator
reads to show each commit as a materialization (with the data version) and the counts.

Exactly-once effect without a transaction across tables: a redelivered batch (the consumer
died between commit and ack) is recognised row by row, in the tables themselves. Its records
are already in the corpus (record ids: duplicates, not stored again) and its refused records
are already in the quarantine (``source_file`` = the stream, ``source_row`` = the sequence:
not quarantined again). So a commit followed by any number of redeliveries leaves the lake as
one clean pass would.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from ingestion import lake

_TS = pa.timestamp("us", tz="UTC")

STREAM_COMMITS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), False),
        pa.field("run_id", pa.string(), False),
        pa.field("first_sequence", pa.int64(), False),
        pa.field("last_sequence", pa.int64(), False),
        pa.field("messages", pa.int64(), False),
        pa.field("accepted", pa.int64(), False),
        pa.field("duplicates", pa.int64(), False),
        pa.field("quarantined", pa.int64(), False),
        pa.field("dead_lettered", pa.int64(), False),
        pa.field("retried", pa.int64(), False),
        pa.field("corpus_version", pa.int64()),
        pa.field("quarantine_version", pa.int64()),
        pa.field("oldest_published_at", _TS),
        pa.field("committed_at", _TS, False),
    ]
)


def ledger_path(lake_dir: Path) -> Path:
    return Path(lake_dir) / "stream_commits"


def append_commit(lake_dir: Path, row: dict) -> int:
    table = pa.Table.from_pylist([row], schema=STREAM_COMMITS_SCHEMA)
    return lake.append(ledger_path(lake_dir), table, STREAM_COMMITS_SCHEMA)


def read_commits(lake_dir: Path, after_version: int | None = None) -> tuple[pa.Table, int | None]:
    """Ledger rows added after table version ``after_version`` (all when None), and the
    ledger's current version. Reads only the data files those versions added."""
    try:
        table = DeltaTable(str(ledger_path(lake_dir)))
    except TableNotFoundError:
        return STREAM_COMMITS_SCHEMA.empty_table(), None
    version = table.version()
    if after_version is None:
        return table.to_pyarrow_table().sort_by("committed_at"), version
    if after_version >= version:
        return STREAM_COMMITS_SCHEMA.empty_table(), version
    seen = set(DeltaTable(str(ledger_path(lake_dir)), version=after_version).file_uris())
    new = [uri for uri in table.file_uris() if uri not in seen]
    if not new:
        return STREAM_COMMITS_SCHEMA.empty_table(), version
    parts = [pq.read_table(uri.removeprefix("file://")) for uri in new]
    rows = pa.concat_tables([p.cast(STREAM_COMMITS_SCHEMA) for p in parts])
    return rows.sort_by("committed_at"), version


def quarantined_sequences(quarantine_path: Path, source: str, sequences: list[int]) -> set[int]:
    """Which of ``sequences`` of ``source`` already have a quarantine row."""
    if not sequences:
        return set()
    try:
        table = DeltaTable(str(quarantine_path))
    except TableNotFoundError:
        return set()
    found = table.to_pyarrow_table(
        columns=["source_row"],
        filters=[
            ("source_file", "=", source),
            ("source_row", ">=", min(sequences)),
            ("source_row", "<=", max(sequences)),
        ],
    )
    wanted = pa.array(sequences, pa.int64())
    hits = found.column(0).filter(pc.is_in(found.column(0), value_set=wanted))
    return set(hits.to_pylist())


def commit_row(
    source: str,
    run_id: str,
    sequences: list[int],
    counts: dict[str, int],
    corpus_version: int | None,
    quarantine_version: int | None,
    oldest_published_at: datetime | None,
    committed_at: datetime,
) -> dict:
    return {
        "source": source,
        "run_id": run_id,
        "first_sequence": min(sequences),
        "last_sequence": max(sequences),
        "messages": len(sequences),
        **counts,
        "corpus_version": corpus_version,
        "quarantine_version": quarantine_version,
        "oldest_published_at": oldest_published_at,
        "committed_at": committed_at,
    }
