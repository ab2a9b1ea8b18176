"""Streaming readers of the ingestion contract (ingestion.readers): JSONL block cutting, line
numbers, BOM and over-long lines; CSV and Parquet column handling, typing and whole-file
rejections."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingestion.contract import FileRejected
from ingestion.readers import read_csv, read_jsonl, read_parquet


def _rows(batches) -> tuple[list[dict], list[tuple]]:
    rows, refused = [], []
    for batch in batches:
        rows += batch.table.to_pylist()
        refused += list(zip(batch.refused.rows, batch.refused.codes, strict=True))
    return rows, refused


def test_jsonl_blocks_cut_at_newlines_and_keep_line_numbers():
    lines = [json.dumps({"text": f"record {i} " + "x" * (i % 7)}) for i in range(50)]
    lines[10] = ""
    data = ("\r\n".join(lines)).encode()  # CRLF endings, no newline after the last line
    whole, _ = _rows(read_jsonl(io.BytesIO(data), 1 << 20, 64))
    small, _ = _rows(read_jsonl(io.BytesIO(data), 1 << 20, 64, block_bytes=17))
    assert whole == small
    assert [r["source_row"] for r in whole] == [i + 1 for i in range(50) if i != 10]
    assert whole[-1]["text"] == "record 49 " + "x" * (49 % 7)


def test_jsonl_byte_order_mark_is_not_content():
    rows, refused = _rows(read_jsonl(io.BytesIO(b'\xef\xbb\xbf{"text": "a"}\n'), 1 << 20, 64))
    assert [r["text"] for r in rows] == ["a"] and refused == []


def test_jsonl_line_longer_than_the_memory_bound_is_refused_and_skipped():
    long_line = json.dumps({"text": "y" * 5000})
    data = f'{{"text": "before"}}\n{long_line}\n{{"text": "after"}}\n{long_line}'.encode()
    rows, refused = _rows(read_jsonl(io.BytesIO(data), 1000, 64, block_bytes=256))
    assert [(r["text"], r["source_row"]) for r in rows] == [("before", 1), ("after", 3)]
    assert refused == [(2, "line_too_long"), (4, "line_too_long")]


def test_csv_reads_every_column_as_string_and_counts_data_rows():
    data = b'id,text,extra\n007,"multi\nline",1\n008,plain,x\n'
    rows, _ = _rows(read_csv(io.BytesIO(data), 10, 64))
    assert [(r["id"], r["text"], r["source_row"]) for r in rows] == [
        ("007", "multi\nline", 1),
        ("008", "plain", 2),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"body\nhello\n", "no 'text' column"),
        (b'text\n"ok"\n"\xff"\n', "cannot be parsed"),
        (b"text,id\na,1\nb,2,3\n", "cannot be parsed"),
    ],
)
def test_csv_rejections(data, message):
    with pytest.raises(FileRejected, match=message) as info:
        _rows(read_csv(io.BytesIO(data), 10, 64))
    assert info.value.code == "unparseable_file"


def _parquet(table: pa.Table, **kwargs) -> io.BytesIO:
    out = io.BytesIO()
    pq.write_table(table, out, **kwargs)
    out.seek(0)
    return out


def test_parquet_types_are_mapped_to_strings():
    table = pa.table(
        {
            "text": pa.array(["a", "b", "a"]).dictionary_encode(),
            "id": pa.array([1, 2, None], pa.int64()),
            "source": pa.array([{"k": 1}, None, {"k": 2}]),
            "created_at": pa.array(["2024", None, ""], pa.large_string()),
        }
    )
    rows, refused = _rows(read_parquet(_parquet(table), 2, 64))
    assert refused == []
    assert [(r["text"], r["id"], r["source"], r["source_row"]) for r in rows] == [
        ("a", "1", '{"k":1}', 1),
        ("b", "2", None, 2),
        ("a", None, '{"k":2}', 3),
    ]


def test_parquet_invalid_utf8_in_a_string_column_is_refused_per_row():
    offsets = pa.array([0, 2, 3, 5], pa.int32()).buffers()[1]
    text = pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(b"ok\xffno")])
    rows, refused = _rows(read_parquet(_parquet(pa.table({"text": text})), 10, 64))
    assert [r["text"] for r in rows] == ["ok", "no"]
    assert refused == [(2, "invalid_utf8")]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"body": ["x"]}), "no 'text' column"),
        (pa.table({"text": [1, 2]}), "has type int64"),
    ],
)
def test_parquet_rejections(table, message):
    with pytest.raises(FileRejected, match=message):
        _rows(read_parquet(_parquet(table), 10, 64))


def test_truncated_parquet_is_rejected():
    data = _parquet(pa.table({"text": ["x"] * 100})).getvalue()
    with pytest.raises(FileRejected, match="not a readable Parquet file"):
        _rows(read_parquet(io.BytesIO(data[: len(data) - 20]), 10, 64))
