"""What an ingest run reports: per file, per validation, and in total.

Plain frozen dataclasses so the orchestrator can turn them into asset metadata and checks
without knowing how ingestion works. Counting rule: for an ingested file
``records_read == accepted + duplicates + quarantined``; a rejected or already-ingested file
reports zeros (a rejected file's single quarantine row describes the file, not a record).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FileStatus = Literal["ingested", "rejected", "already_ingested"]


@dataclass(frozen=True)
class LandedFile:
    path: Path
    relative: str  # POSIX path relative to the landing directory
    fingerprint: str  # sha256 of the bytes; for a symlink "symlink:" + sha256 of its target
    size: int
    mtime_ns: int = 0  # when it was hashed: an unchanged file is not hashed again


@dataclass(frozen=True)
class FileReport:
    source_file: str
    fingerprint: str | None
    status: FileStatus
    records_read: int
    accepted: int
    duplicates: int
    quarantined: int
    reason: str | None  # for rejected files: what was wrong and what to do
    reason_code: str | None = None


@dataclass(frozen=True)
class ValidationSummary:
    success: bool
    batches: int
    rows_validated: int
    failed_expectations: list[str]  # descriptions of failed expectations, empty on success


@dataclass(frozen=True)
class IngestReport:
    files: list[FileReport]
    corpus_version: int | None  # Delta version of lake/corpus after the run
    quarantine_version: int | None
    validation: ValidationSummary
    run_id: str = ""

    @property
    def records_read(self) -> int:
        return sum(f.records_read for f in self.files)

    @property
    def accepted(self) -> int:
        return sum(f.accepted for f in self.files)

    @property
    def duplicates(self) -> int:
        return sum(f.duplicates for f in self.files)

    @property
    def quarantined(self) -> int:
        return sum(f.quarantined for f in self.files)
