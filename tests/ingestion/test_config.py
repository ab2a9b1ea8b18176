"""Ingestion settings (ingestion.config): bad values fail on construction naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestion.config import IngestConfig


def test_paths_and_table_locations(tmp_path):
    config = IngestConfig(str(tmp_path / "landing"), str(tmp_path / "lake"))
    assert config.landing_dir == tmp_path / "landing"
    assert config.corpus_path == tmp_path / "lake" / "corpus"
    assert (
        config.quarantine_path.name == "quarantine" and config.ledger_path.name == "ingested_files"
    )
    assert config.max_line_bytes > 6 * config.max_text_chars


@pytest.mark.parametrize("field", ["max_text_chars", "batch_rows", "excerpt_chars"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10"])
def test_non_positive_integers_are_refused(field, value):
    with pytest.raises(ValueError, match=f"IngestConfig.{field} must be a positive integer"):
        IngestConfig(Path("landing"), Path("lake"), **{field: value})


def test_landing_dir_must_be_a_directory(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ValueError, match="IngestConfig.landing_dir must be a directory"):
        IngestConfig(file, tmp_path / "lake")
    with pytest.raises(ValueError, match="IngestConfig.lake_dir must be a non-empty path"):
        IngestConfig(tmp_path, "")
