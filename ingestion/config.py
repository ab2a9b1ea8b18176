"""Ingestion settings: where files land, where the lake lives, and the bounds that keep a run safe.

One frozen dataclass, validated on construction, so a bad setting fails before any file is
touched and the error names the field. The three Delta tables hang off ``lake_dir``:
``corpus`` (accepted records), ``quarantine`` (everything refused, with a reason) and
``ingested_files`` (the ledger of processed files, keyed by content fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class IngestConfig:
    landing_dir: Path
    lake_dir: Path
    max_text_chars: int = 100_000
    batch_rows: int = 100_000  # rows per validated, written batch: the memory bound of a run
    excerpt_chars: int = 512  # bound on the raw excerpt stored with each quarantined row

    def __post_init__(self) -> None:
        for name in ("landing_dir", "lake_dir"):
            value = getattr(self, name)
            if not isinstance(value, str | Path) or str(value) == "":
                raise ValueError(f"IngestConfig.{name} must be a non-empty path, got {value!r}")
            # frozen: normalise through object.__setattr__ so callers may pass str
            object.__setattr__(self, name, Path(value))
        for name in ("max_text_chars", "batch_rows", "excerpt_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"IngestConfig.{name} must be a positive integer, got {value!r}")
        if self.landing_dir.exists() and not self.landing_dir.is_dir():
            raise ValueError(
                f"IngestConfig.landing_dir must be a directory, got the file {self.landing_dir}"
            )

    @property
    def corpus_path(self) -> Path:
        return self.lake_dir / "corpus"

    @property
    def quarantine_path(self) -> Path:
        return self.lake_dir / "quarantine"

    @property
    def ledger_path(self) -> Path:
        return self.lake_dir / "ingested_files"

    @property
    def max_line_bytes(self) -> int:
        """Longest JSONL line read into memory; a JSON string may spend 6 bytes per character
        (``\\uXXXX``), plus room for the optional fields."""
        return 6 * self.max_text_chars + (1 << 20)
