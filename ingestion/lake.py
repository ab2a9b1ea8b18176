"""The lake: the three Delta tables ingestion writes, their schemas, and how to read them.

``corpus`` holds accepted records (the shared data contract; its Delta version is the data
version), ``quarantine`` every refused record or file with a reason, ``ingested_files`` the
ledger of processed files keyed by content fingerprint. One writer at a time is assumed (the
orchestrator runs ingestion with concurrency 1); every write is still safe to repeat.

The set of record ids already in the corpus is held as 32-byte digests in numpy arrays, sorted
by an 8-byte key (40 bytes a record, against ~130 for a 64-character string in a Python set),
and is loaded by streaming the ``record_id`` column of the table's Parquet files. Row groups
are capped because the Delta writer holds a whole row group in memory until it is full.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import TableNotFoundError

from ingestion.contract import OPTIONAL_FIELDS
from ingestion.digest import from_hex as digests

_TS = pa.timestamp("us", tz="UTC")
# Bounded row groups: the Delta writer holds a whole row group in memory before flushing it,
# and with its default (about a million rows) one large file's commit costs hundreds of MiB.
_WRITER = WriterProperties(compression="SNAPPY", max_row_group_size=128 * 1024)

CORPUS_SCHEMA = pa.schema(
    [pa.field("record_id", pa.string(), False), pa.field("text", pa.string(), False)]
    + [pa.field(name, pa.string()) for name in OPTIONAL_FIELDS]
    + [
        pa.field("source_file", pa.string(), False),
        pa.field("source_fingerprint", pa.string(), False),
        pa.field("source_row", pa.int64(), False),
        pa.field("ingested_at", _TS, False),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string(), False),
        pa.field("source_fingerprint", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("reason_code", pa.string(), False),
        pa.field("reason", pa.string(), False),
        pa.field("raw_excerpt", pa.string(), False),
        pa.field("run_id", pa.string()),
        pa.field("quarantined_at", _TS, False),
    ]
)
LEDGER_SCHEMA = pa.schema(
    [
        pa.field("fingerprint", pa.string(), False),
        pa.field("source_file", pa.string(), False),
        pa.field("status", pa.string(), False),
        pa.field("size", pa.int64(), False),
        pa.field("mtime_ns", pa.int64(), False),
        pa.field("records_read", pa.int64(), False),
        pa.field("accepted", pa.int64(), False),
        pa.field("duplicates", pa.int64(), False),
        pa.field("quarantined", pa.int64(), False),
        pa.field("reason_code", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("corpus_version", pa.int64()),
        pa.field("ingested_at", _TS, False),
        pa.field("run_id", pa.string(), False),
    ]
)


def _open(path: Path, version: int | None = None) -> DeltaTable | None:
    try:
        return DeltaTable(str(path), version=version)
    except TableNotFoundError:
        return None


def table_version(path: Path) -> int | None:
    table = _open(path)
    return None if table is None else table.version()


def corpus_version(lake_dir: Path) -> int | None:
    """Delta version of ``lake_dir/corpus`` (the data version), or None if it does not exist."""
    return table_version(Path(lake_dir) / "corpus")


def corpus_rows(lake_dir: Path, version: int | None = None) -> int:
    """Rows of the corpus at a data version, from the Delta log alone (no data file is read)."""
    table = _open(Path(lake_dir) / "corpus", version)
    if table is None:
        raise FileNotFoundError(f"no corpus table under {lake_dir}; run ingestion first")
    actions = pa.table(table.get_add_actions(flatten=True))  # an arro3 table: convert
    return int(pc.sum(actions.column("num_records")).as_py() or 0)


def read_table(
    path: Path, version: int | None = None, columns: list[str] | None = None
) -> pa.Table:
    table = _open(path, version)
    if table is None:
        raise FileNotFoundError(f"no Delta table at {path}; run ingestion first")
    return table.to_pyarrow_table(columns=columns)


def read_corpus(
    lake_dir: Path, version: int | None = None, columns: list[str] | None = None
) -> pa.Table:
    """The corpus at a data version (latest when None), optionally only some columns."""
    return read_table(Path(lake_dir) / "corpus", version, columns)


def append(path: Path, data: pa.Table | pa.RecordBatchReader, schema: pa.Schema) -> int:
    """Append in one Delta commit (creating the table on first write); returns the new version."""
    if isinstance(data, pa.Table):
        data = data.cast(schema)
    write_deltalake(str(path), data, mode="append", writer_properties=_WRITER)
    version = table_version(path)
    assert version is not None
    return version


def append_stream(
    path: Path, batches: Iterable[pa.Table | pa.RecordBatch], schema: pa.Schema
) -> int:
    """Append a stream of tables as ONE commit; if the stream raises, nothing is committed."""

    def record_batches():
        for part in batches:
            if isinstance(part, pa.RecordBatch):
                yield part.cast(schema)
            else:
                yield from part.cast(schema).to_batches()

    return append(path, pa.RecordBatchReader.from_batches(schema, record_batches()), schema)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def delete_quarantine_of(path: Path, fingerprint: str | None, source_file: str) -> None:
    """Remove the quarantine rows of one file (left by an interrupted or failed attempt)."""
    table = _open(path)
    if table is None:
        return
    if fingerprint is not None:
        predicate = f"source_fingerprint = {_literal(fingerprint)}"
    else:
        predicate = f"source_fingerprint IS NULL AND source_file = {_literal(source_file)}"
    table.delete(predicate)


def quarantined_fingerprints(path: Path) -> set[str]:
    table = _open(path)
    if table is None:
        return set()
    column = table.to_pyarrow_table(columns=["source_fingerprint"]).column(0)
    return {v for v in pc.unique(column).to_pylist() if v is not None}


def read_ledger(path: Path) -> pa.Table:
    table = _open(path)
    return LEDGER_SCHEMA.empty_table() if table is None else table.to_pyarrow_table()


def _prefixes(values: np.ndarray) -> np.ndarray:
    """First 8 bytes of each digest as an integer: a cheap sort key (collisions are checked)."""
    return np.frombuffer(values.tobytes(), dtype=">u8").reshape(-1, 4)[:, 0]


class IdSet:
    """A compact set of record ids: a few digest arrays sorted by an 8-byte prefix, merged as
    they accumulate. Membership is a binary search on the prefix, then a full 32-byte compare.
    Memory: 40 bytes per id."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted prefixes, digests)

    def __len__(self) -> int:
        return sum(len(d) for _, d in self._parts)

    @classmethod
    def from_corpus(cls, corpus_path: Path) -> IdSet:
        ids = cls()
        table = _open(corpus_path)
        if table is None:
            return ids
        # the corpus is written append-only by this package (no deletion vectors), so its
        # active Parquet files are exactly its rows
        for uri in table.file_uris():
            local = uri.removeprefix("file://")
            for batch in pq.ParquetFile(local).iter_batches(
                columns=["record_id"], batch_size=1 << 20
            ):
                ids.add(digests(batch.column(0)))
        return ids

    def add(self, values: np.ndarray) -> None:
        # merge with trailing parts of similar size (as a log-structured merge does): few
        # parts to search, and each id is re-sorted only O(log n) times as the set grows
        part = values
        while self._parts and len(self._parts[-1][1]) <= 2 * len(part):
            part = np.concatenate([self._parts.pop()[1], part])
        if len(part):
            self._parts.append(self._sorted(part))

    def merge(self, other: IdSet) -> None:
        for _, part in other._parts:
            self.add(part)

    @staticmethod
    def _sorted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prefixes = _prefixes(values)
        order = np.argsort(prefixes, kind="stable")
        return prefixes[order], values[order]

    def contains(self, values: np.ndarray) -> np.ndarray:
        found = np.zeros(len(values), bool)
        if not len(values) or not self._parts:
            return found
        # searching in sorted order walks each stored array forwards: far fewer cache misses
        prefixes_wanted = _prefixes(values)
        order = np.argsort(prefixes_wanted)
        query, wanted = prefixes_wanted[order], values[order]
        hit = np.zeros(len(values), bool)
        for prefixes, stored in self._parts:
            lo = np.searchsorted(prefixes, query, "left")
            hi = np.searchsorted(prefixes, query, "right")
            single = np.flatnonzero(hi - lo == 1)
            hit[single] |= stored[lo[single]] == wanted[single]
            for i in np.flatnonzero(hi - lo > 1):  # shared 8-byte prefix: vanishingly rare
                hit[i] |= bool(np.any(stored[lo[i] : hi[i]] == wanted[i]))
        found[order] = hit
        return found
