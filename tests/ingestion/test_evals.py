"""Contract: eval-suite files in ``landing/evals/<suite>/`` become one versioned Delta table per
suite; bad rows (missing expected, a regex that does not compile, an unknown match kind, a line
that is not JSON) are quarantined with a reason and never stop the good ones; a file is
ingested once (by content fingerprint); misplaced and unsupported files are refused whole; the
corpus ingestion never reads the suites' folder."""

from __future__ import annotations

import json

import deltalake
import pyarrow as pa
import pyarrow.parquet as pq

from evaluation.suites import load_suites
from ingestion.config import IngestConfig
from ingestion.evals import ingest_suites
from ingestion.pipeline import discover
from ingestion.sample import write_eval_suite


def quarantine(lake) -> list[dict]:
    return deltalake.DeltaTable(str(lake / "quarantine")).to_pyarrow_table().to_pylist()


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_land(tmp_path):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    suite = landing / "evals" / "facts"
    suite.mkdir(parents=True)
    rows = [
        {"prompt": "Capital of France?", "expected": "Paris"},
        {"prompt": "2+2=", "expected": "4", "match": "prefix"},
        {"prompt": "Colour of the sky?", "match": "exact"},  # missing expected
        {"prompt": "A number:", "expected": "([0-9", "match": "regex"},  # bad regex
        {"prompt": "Say hi", "expected": "hi", "match": "fuzzy"},  # unknown match kind
        {"prompt": "Digits:", "expected": r"^\d+$", "match": "regex"},
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json", ""]
    (suite / "a.jsonl").write_text("\n".join(lines) + "\n")
    [report] = ingest_suites(landing, lake, "run-1")
    assert (report.suite, report.status) == ("facts", "ingested")
    assert (report.records_read, report.accepted, report.quarantined) == (7, 3, 4)
    refused = {(q["source_row"], q["reason_code"]) for q in quarantine(lake)}
    assert refused == {
        (3, "missing_expected"),
        (4, "invalid_regex"),
        (5, "unknown_match"),
        (7, "invalid_json"),
    }
    reasons = {q["reason_code"]: q["reason"] for q in quarantine(lake)}
    assert "'fuzzy'" in reasons["unknown_match"] and "exact, prefix" in reasons["unknown_match"]
    [loaded] = load_suites(lake / "evals", max_examples=100)
    assert loaded.ref() == "facts@0" and len(loaded.examples) == 3
    assert {e.match for e in loaded.examples} == {"exact", "prefix", "regex"}

    # idempotent: the same content (also under another name) adds nothing
    (suite / "copy.jsonl").write_text((suite / "a.jsonl").read_text())
    again = ingest_suites(landing, lake, "run-2")
    assert [r.status for r in again] == ["already_ingested", "already_ingested"]
    assert deltalake.DeltaTable(str(lake / "evals" / "facts")).version() == 0
    assert len(quarantine(lake)) == 4


def test_csv_parquet_duplicates_and_new_version(tmp_path):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    suite = landing / "evals" / "qa"
    suite.mkdir(parents=True)
    (suite / "one.csv").write_text("prompt,expected\nQ1,1\nQ2,2\n")
    ingest_suites(landing, lake, "r1")
    table = pa.table({"prompt": ["Q2", "Q3"], "expected": ["2", "3"], "match": [None, "exact"]})
    pq.write_table(table, suite / "two.parquet")
    [_, second] = ingest_suites(landing, lake, "r2")
    assert (second.accepted, second.duplicates) == (1, 1)  # Q2 is already in the suite
    [qa] = load_suites(lake / "evals", max_examples=100)
    assert qa.version == 1 and sorted(e.prompt for e in qa.examples) == ["Q1", "Q2", "Q3"]
    [pinned] = load_suites(lake / "evals", max_examples=100, pinned={"qa": 0})
    assert pinned.version == 0 and len(pinned.examples) == 2


def test_misplaced_unsupported_and_empty_files_are_refused_whole(tmp_path):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    (landing / "evals" / "s").mkdir(parents=True)
    (landing / "evals" / "loose.jsonl").write_text('{"prompt": "p", "expected": "e"}\n')
    (landing / "evals" / "s" / "notes.txt").write_text("hello\n")
    (landing / "evals" / "s" / "empty.csv").write_text("")
    reports = {r.source_file: r for r in ingest_suites(landing, lake, "r1")}
    assert {k: r.status for k, r in reports.items()} == {
        "evals/loose.jsonl": "rejected",
        "evals/s/notes.txt": "rejected",
        "evals/s/empty.csv": "rejected",
    }
    codes = {q["source_file"]: q["reason_code"] for q in quarantine(lake)}
    assert codes == {
        "evals/loose.jsonl": "misplaced_file",
        "evals/s/notes.txt": "unsupported_extension",
        "evals/s/empty.csv": "empty_file",
    }
    assert load_suites(lake / "evals", max_examples=10) == ()


def test_corpus_ingestion_ignores_the_suites_folder(tmp_path):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    write_eval_suite(landing, count=10)
    (landing / "corpus.jsonl").write_text('{"text": "hello"}\n')
    found = discover(IngestConfig(landing_dir=landing, lake_dir=lake))
    assert [f.relative for f in found] == ["corpus.jsonl"]
    [report] = ingest_suites(landing, lake, "r1")
    assert report.suite == "demo" and report.accepted == 10
