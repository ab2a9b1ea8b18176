"""Quarantine rows: building them, and spooling one file's rows until its corpus commit.

The spool keeps a file's refused rows in memory up to ``batch_rows``, then spills them to a
local Parquet file under the lake dir, so a huge file of bad records stays within the memory
bound. Nothing reaches the quarantine table while the file's corpus stream runs (the Delta
writer drives that stream and cannot be re-entered to write another table), and nothing at
all if the file is then rejected as a whole: the spool is simply discarded.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from itertools import chain
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ingestion import lake
from ingestion.parse import Refusals

_TS = lake.QUARANTINE_SCHEMA.field("quarantined_at").type


def quarantine_table(
    source_file: str,
    fingerprint: str | None,
    refused: Refusals,
    run_id: str,
    at: datetime,
) -> pa.Table:
    n = len(refused)
    return pa.table(
        {
            "source_file": pa.array([source_file] * n, pa.string()),
            "source_fingerprint": pa.array([fingerprint] * n, pa.string()),
            "source_row": pa.array(refused.rows, pa.int64()),
            "reason_code": pa.array(refused.codes, pa.string()),
            "reason": pa.array(refused.reasons, pa.string()),
            "raw_excerpt": pa.array(refused.excerpts, pa.string()),
            "run_id": pa.array([run_id] * n, pa.string()),
            "quarantined_at": pa.array([at] * n, _TS),
        },
        schema=lake.QUARANTINE_SCHEMA,
    )


class QuarantineSpool:
    """One file's refused rows, appended to the quarantine table in one commit by ``commit``."""

    def __init__(self, lake_dir: Path, batch_rows: int) -> None:
        self.lake_dir = lake_dir
        self.batch_rows = batch_rows
        self.tables: list[pa.Table] = []
        self.rows = 0
        self.spilled = 0
        self._dir: tempfile.TemporaryDirectory | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> QuarantineSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    @property
    def _path(self) -> Path:
        assert self._dir is not None
        return Path(self._dir.name) / "quarantine.parquet"

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.tables.append(table)
        self.rows += table.num_rows
        if self.rows >= self.batch_rows:
            if self._writer is None:
                self.lake_dir.mkdir(parents=True, exist_ok=True)
                self._dir = tempfile.TemporaryDirectory(prefix=".spill-", dir=self.lake_dir)
                self._writer = pq.ParquetWriter(self._path, lake.QUARANTINE_SCHEMA)
            for part in self.tables:
                self._writer.write_table(part)
            self.spilled += self.rows
            self.tables, self.rows = [], 0

    def commit(self, quarantine_path: Path) -> int | None:
        """Append everything spooled in one commit; returns the new version (None if empty)."""
        if self.spilled + self.rows == 0:
            return None
        parts: list = []
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            parts.append(pq.ParquetFile(self._path).iter_batches(batch_size=self.batch_rows))
        parts.append(self.tables)
        version = lake.append_stream(
            quarantine_path, chain.from_iterable(parts), lake.QUARANTINE_SCHEMA
        )
        self.tables, self.rows, self.spilled = [], 0, 0
        return version
