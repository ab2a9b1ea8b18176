"""Builds a landing directory of good and bad files in all three formats, with the outcome the
ingestion contract prescribes for each, for the ingestion tests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LIMIT = 100  # max_text_chars used with this landing dir

# what each ingested file must report: (records_read, accepted, duplicates, quarantined)
COUNTS = {
    "good.csv": (4, 2, 1, 1),
    "good.jsonl": (10, 3, 1, 6),
    "good.parquet": (5, 2, 1, 2),
    "sub/nested.jsonl": (2, 1, 1, 0),
}
REJECTED = {
    "badutf8.csv": "unparseable_file",
    "empty.jsonl": "empty_file",
    "link.jsonl": "symlink",
    "malformed.csv": "unparseable_file",
    "notes.txt": "unsupported_extension",
    "notext.csv": "unparseable_file",
    "truncated.parquet": "unparseable_file",
}
CORPUS_TEXTS = {"delta", "eps\nilon", "alpha", "beta\nline", "gamma", "zeta", "eta\ntheta", "iota"}
RECORD_QUARANTINE = {
    ("good.csv", 3, "empty_text"),
    ("good.jsonl", 5, "invalid_json"),
    ("good.jsonl", 6, "missing_text"),
    ("good.jsonl", 7, "empty_text"),
    ("good.jsonl", 8, "text_not_string"),
    ("good.jsonl", 9, "text_too_long"),
    ("good.jsonl", 10, "invalid_utf8"),
    ("good.parquet", 2, "missing_text"),
    ("good.parquet", 4, "text_too_long"),
}
QUARANTINE = RECORD_QUARANTINE | {(name, None, code) for name, code in REJECTED.items()}


def build_landing(landing: Path) -> None:
    landing.mkdir(parents=True)
    (landing / "sub").mkdir()
    jsonl = [
        json.dumps({"id": "j1", "source": "s", "text": "alpha"}),
        json.dumps({"id": "j2", "text": "beta\r\nline"}),
        "   ",
        json.dumps({"text": "alpha"}),
        '{"text": "unterminated',
        json.dumps({"id": "j6"}),
        json.dumps({"text": "   "}),
        json.dumps({"text": ["x"]}),
        json.dumps({"text": "x" * (LIMIT + 1)}),
    ]
    body = "\n".join(jsonl).encode() + b'\n{"text": "caf\xe9"}\n'
    body += json.dumps({"text": "gamma", "created_at": 20240101}).encode() + b"\n"
    (landing / "good.jsonl").write_bytes(body)
    (landing / "good.csv").write_bytes(
        b'id,source,text,created_at\r\nc1,s,delta,2024\r\nc2,,"eps\r\nilon",\r\nc3,s,,x\r\nc4,s,delta,x\r\n'
    )
    pq.write_table(
        pa.table(
            {
                "text": ["zeta", None, "delta", "x" * (LIMIT + 1), "eta\rtheta"],
                "id": [1, 2, 3, 4, 5],
            }
        ),
        landing / "good.parquet",
    )
    (landing / "sub" / "nested.jsonl").write_bytes(b'{"text": "iota"}\n{"text": "beta\\nline"}')
    (landing / "badutf8.csv").write_bytes(b'text\n"ok"\n"\xff\xfe bad"\n')
    (landing / "empty.jsonl").write_bytes(b"")
    (landing / "link.jsonl").symlink_to("good.jsonl")  # relative: same identity anywhere
    (landing / "malformed.csv").write_bytes(b"text,id\nfine,1\ntoo,many,fields\n")
    (landing / "notes.txt").write_text("an operator's note\n")
    (landing / "notext.csv").write_text("body,id\nhello,1\n")
    whole = landing / "whole.parquet.tmp"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(100)]}), whole)
    (landing / "truncated.parquet").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    (landing / ".hidden.jsonl").write_text('{"text": "never read"}\n')
