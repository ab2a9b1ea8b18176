"""End-to-end ingestion contract (ingestion.pipeline) over a real landing dir of good and bad
JSONL, CSV and Parquet files: per-file counts, the corpus, quarantine and ledger Delta tables,
idempotency on re-runs and renamed copies, symlink / outside-landing / corrupt-file rejection,
and a batch failing the expectation suite never reaching the corpus."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from landing import CORPUS_TEXTS, COUNTS, LIMIT, QUARANTINE, REJECTED, build_landing  # noqa: E402

from ingestion import lake  # noqa: E402
from ingestion.pipeline import IngestConfig, discover, ingest  # noqa: E402
from ingestion.records import record_id  # noqa: E402


@pytest.fixture
def config(tmp_path: Path) -> IngestConfig:
    build_landing(tmp_path / "landing")
    return IngestConfig(tmp_path / "landing", tmp_path / "lake", max_text_chars=LIMIT, batch_rows=3)


def _quarantine(config: IngestConfig) -> list[tuple]:
    table = lake.read_table(
        config.quarantine_path, columns=["source_file", "source_row", "reason_code"]
    )
    return sorted(tuple(r.values()) for r in table.to_pylist())


def test_first_run_applies_every_rule(config: IngestConfig):
    landed = discover(config)
    assert [f.relative for f in landed] == sorted(set(COUNTS) | set(REJECTED))
    report = ingest(config, run_id="run-1")

    by_file = {f.source_file: f for f in report.files}
    for name, counts in COUNTS.items():
        f = by_file[name]
        assert (f.status, (f.records_read, f.accepted, f.duplicates, f.quarantined)) == (
            "ingested",
            counts,
        )
        assert f.records_read == f.accepted + f.duplicates + f.quarantined
    for name, code in REJECTED.items():
        f = by_file[name]
        assert (f.status, f.reason_code, f.records_read, f.quarantined) == ("rejected", code, 0, 0)
        assert f.reason
    assert report.accepted == len(CORPUS_TEXTS) and report.validation.success
    assert report.validation.rows_validated == report.accepted

    corpus = lake.read_corpus(config.lake_dir, version=report.corpus_version)
    assert corpus.schema.equals(lake.CORPUS_SCHEMA)
    assert set(corpus.column("text").to_pylist()) == CORPUS_TEXTS and corpus.num_rows == len(
        CORPUS_TEXTS
    )
    for row in corpus.to_pylist():
        assert row["record_id"] == record_id(row["text"])
    gamma = corpus.filter(pa.compute.equal(corpus["text"], "gamma")).to_pylist()[0]
    assert (gamma["source_file"], gamma["source_row"], gamma["created_at"]) == (
        "good.jsonl",
        11,
        "20240101",
    )
    zeta = corpus.filter(pa.compute.equal(corpus["text"], "zeta")).to_pylist()[0]
    assert (zeta["id"], zeta["source_file"], zeta["source_row"]) == ("1", "good.parquet", 1)

    assert _quarantine(config) == sorted(QUARANTINE, key=lambda r: (r[0], r[1] or 0, r[2]))
    quarantine = lake.read_table(config.quarantine_path).to_pylist()
    assert all(r["reason"] and r["run_id"] == "run-1" for r in quarantine)
    assert all(len(r["raw_excerpt"]) <= config.excerpt_chars for r in quarantine)
    assert report.quarantine_version == lake.table_version(config.quarantine_path)

    ledger = lake.read_ledger(config.ledger_path).to_pylist()
    assert sorted(r["source_file"] for r in ledger) == sorted(set(COUNTS) | set(REJECTED))
    assert {r["source_file"]: r["status"] for r in ledger}["link.jsonl"] == "rejected"


def test_second_run_and_renamed_copies_add_nothing(config: IngestConfig):
    first = ingest(config)
    assert discover(config) == []
    second = ingest(config)
    assert second.files == [] and second.corpus_version == first.corpus_version

    shutil.copy(config.landing_dir / "good.jsonl", config.landing_dir / "renamed.jsonl")
    again = ingest(config, paths=[config.landing_dir / "good.csv", Path("renamed.jsonl")])
    assert [f.status for f in again.files] == ["already_ingested", "already_ingested"]
    assert again.corpus_version == first.corpus_version
    assert again.quarantine_version == first.quarantine_version

    with (config.landing_dir / "good.jsonl").open("ab") as f:
        f.write(b'{"text": "kappa"}\n')
    (changed,) = ingest(config).files
    assert (changed.source_file, changed.accepted, changed.duplicates) == ("good.jsonl", 1, 4)
    assert lake.read_corpus(config.lake_dir).num_rows == len(CORPUS_TEXTS) + 1
    # the changed file's record-level quarantine rows are its own, keyed by its new fingerprint
    rows = [r for r in _quarantine(config) if r[0] == "good.jsonl"]
    assert len(rows) == 2 * 6


def test_same_content_twice_in_one_run_is_ingested_once(config: IngestConfig):
    shutil.copy(config.landing_dir / "good.csv", config.landing_dir / "good-copy.csv")
    report = ingest(config, paths=[Path("good.csv"), Path("good-copy.csv")])
    assert [f.status for f in report.files] == ["ingested", "already_ingested"]


def test_symlinks_and_paths_outside_landing_are_refused(config: IngestConfig, tmp_path: Path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"text": "secret"}\n')
    (config.landing_dir / "escape").symlink_to(tmp_path)
    report = ingest(
        config,
        paths=[
            outside,
            config.landing_dir / ".." / "outside.jsonl",
            config.landing_dir / "escape" / "outside.jsonl",
            config.landing_dir / "link.jsonl",
        ],
    )
    assert [f.reason_code for f in report.files] == ["outside_landing"] * 3 + ["symlink"]
    assert report.corpus_version is None  # nothing was read
    assert "escape" in [
        f.relative for f in discover(config)
    ]  # a symlinked dir is listed, never walked


def test_parquet_corrupt_after_first_row_group_commits_nothing(config: IngestConfig):
    path = config.landing_dir / "later-corrupt.parquet"
    texts = ["", " ", "lambda", "mu", "nu", "xi", "omicron", "pi"]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=4, compression="none")
    offset = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 24] = b"\xff" * 24
    path.write_bytes(bytes(data))
    cfg = IngestConfig(config.landing_dir, config.lake_dir, max_text_chars=LIMIT, batch_rows=2)
    (report,) = ingest(cfg, paths=[path]).files
    assert (report.status, report.reason_code) == ("rejected", "unparseable_file")
    assert "after row 4" in report.reason
    assert report.fingerprint is not None
    assert (
        lake.corpus_version(config.lake_dir) is None
    )  # rows of the good first group were not committed
    # the flushed refusals of the first row group were replaced by the one file-level row
    assert _quarantine(config) == [("later-corrupt.parquet", None, "unparseable_file")]


def test_batch_failing_the_suite_is_quarantined_not_committed(config: IngestConfig, monkeypatch):
    from ingestion import run
    from ingestion.validation import CorpusSuite

    # a real suite whose length rule is stricter than the screen's: the two disagree
    monkeypatch.setattr(run, "CorpusSuite", lambda max_text_chars: CorpusSuite(5))
    path = config.landing_dir / "mixed.jsonl"
    path.write_text('{"text": "ab"}\n{"text": "cd"}\n{"text": "too long"}\n{"text": "ef"}\n')
    cfg = IngestConfig(config.landing_dir, config.lake_dir, max_text_chars=LIMIT, batch_rows=2)
    report = ingest(cfg, paths=[path])
    assert not report.validation.success
    assert report.validation.failed_expectations == ["text has 1..5 characters"]
    assert (report.validation.batches, report.validation.rows_validated) == (2, 4)
    (f,) = report.files
    assert (f.accepted, f.quarantined, f.records_read) == (2, 2, 4)
    assert set(lake.read_corpus(config.lake_dir).column("text").to_pylist()) == {"ab", "cd"}
    assert _quarantine(config) == [
        ("mixed.jsonl", 3, "expectation_failed"),
        ("mixed.jsonl", 4, "expectation_failed"),
    ]


def test_unreadable_path_is_reported_and_retried_later(config: IngestConfig):
    report = ingest(config, paths=[config.landing_dir / "missing.jsonl"])
    assert [f.reason_code for f in report.files] == ["unreadable_file"]
    assert (
        lake.read_ledger(config.ledger_path).num_rows == 0
    )  # not remembered: retried when it appears
