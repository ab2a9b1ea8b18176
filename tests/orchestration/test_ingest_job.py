"""Contract: `dagster job execute -j ingest` over a landing zone of good and bad files of
all three formats stores exactly the accepted records, quarantines every refused record
and file with its reason, reports balanced counts, and adds nothing on a second run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from dagster import AssetCheckKey, AssetKey, DagsterInstance
from deltalake import DeltaTable

GOOD_JSONL = ["alpha record", "beta record", "gamma\r\nrecord"]


def build_landing(landing: Path) -> set[str]:
    """Write good and bad files; return the texts the corpus must hold afterwards."""
    landing.mkdir(parents=True)
    with (landing / "good.jsonl").open("wb") as f:
        for i, text in enumerate(GOOD_JSONL):
            f.write(json.dumps({"id": f"j{i}", "text": text, "source": "test"}).encode() + b"\n")
        f.write(json.dumps({"text": "alpha record"}).encode() + b"\n")  # duplicate
        f.write(
            json.dumps({"text": "gamma\nrecord"}).encode() + b"\n"
        )  # duplicate after CRLF folding
        f.write(b'{"text": "not closed\n')  # invalid JSON
        f.write(b'{"text": "bad \xff\xfe bytes"}\n')  # invalid UTF-8
        f.write(json.dumps({"id": "no-text"}).encode() + b"\n")  # missing text
        f.write(json.dumps({"text": 7}).encode() + b"\n")  # not a string
        f.write(json.dumps({"text": " \t "}).encode() + b"\n")  # whitespace only
    pacsv.write_csv(
        pa.table({"id": ["c1", "c2", "c3"], "text": ["csv one", "", "csv three"]}),
        landing / "good.csv",
    )
    pacsv.write_csv(pa.table({"body": ["no text column"]}), landing / "nocol.csv")
    pq.write_table(pa.table({"text": ["parquet one", "beta record"]}), landing / "good.parquet")
    whole = landing / "whole.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(200)]}), whole)
    (landing / "truncated.parquet").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    (landing / "empty.jsonl").write_bytes(b"")
    (landing / "notes.txt").write_text("not a data file")
    outside = landing.parent / "outside.jsonl"
    outside.write_text(json.dumps({"text": "outside the landing zone"}) + "\n")
    (landing / "link.jsonl").symlink_to(outside)
    return {"alpha record", "beta record", "gamma\nrecord", "csv one", "csv three", "parquet one"}


def test_ingest_job_end_to_end_and_idempotent(stack) -> None:
    expected_texts = build_landing(stack.landing)

    first = stack.dagster("job", "execute", "-m", "orchestration.definitions", "-j", "ingest")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    corpus = DeltaTable(str(stack.lake / "corpus"))
    rows = corpus.to_pyarrow_table().to_pylist()
    assert sorted(r["text"] for r in rows) == sorted(expected_texts)
    version_after_first = corpus.version()

    quarantine = DeltaTable(str(stack.lake / "quarantine")).to_pyarrow_table().to_pylist()
    by_file: dict[str, list[str]] = {}
    for row in quarantine:
        by_file.setdefault(row["source_file"], []).append(row["reason_code"])
        assert row["reason"], row
    assert sorted(by_file["good.jsonl"]) == sorted(
        ["invalid_json", "invalid_utf8", "missing_text", "text_not_string", "empty_text"]
    )
    assert by_file["good.csv"] == ["empty_text"]
    assert by_file["nocol.csv"] == ["unparseable_file"]
    assert by_file["truncated.parquet"] == ["unparseable_file"]
    assert by_file["empty.jsonl"] == ["empty_file"]
    assert by_file["notes.txt"] == ["unsupported_extension"]
    assert by_file["link.jsonl"] == ["symlink"]

    instance = DagsterInstance.from_config(str(stack.dagster_home))
    event = instance.get_latest_materialization_event(AssetKey("corpus"))
    metadata = event.asset_materialization.metadata
    assert metadata["data_version"].value == version_after_first
    assert metadata["accepted"].value == len(expected_texts)
    assert metadata["duplicates"].value == 3  # two in good.jsonl, one in good.parquet
    assert metadata["quarantined"].value == 6  # five in good.jsonl, one in good.csv
    for check in ("records_balance", "great_expectations_suite"):
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(AssetKey("corpus"), check)]
        )[AssetCheckKey(AssetKey("corpus"), check)]
        assert record.status.value == "SUCCEEDED", check
        assert record.event.asset_check_evaluation.passed, check
    instance.dispose()

    second = stack.dagster("job", "execute", "-m", "orchestration.definitions", "-j", "ingest")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    again = DeltaTable(str(stack.lake / "corpus")).to_pyarrow_table()
    assert again.num_rows == len(expected_texts)
    assert len(DeltaTable(str(stack.lake / "quarantine")).to_pyarrow_table()) == len(quarantine)
