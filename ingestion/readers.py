"""Streaming readers: one landed file in, raw batches out, never the whole file in memory.

JSONL is read in fixed byte blocks cut at the last newline; CSV through
``pyarrow.csv.open_csv``, every column read as a string so a late value never breaks type
inference; Parquet row group by row group with ``iter_batches``. A reader raises
``FileRejected`` when the file as a whole cannot be read; that may happen after some batches
were produced (a corrupt row group, a bad byte deep in a CSV), which is why the pipeline
commits a file's records only once the reader has finished.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ingestion.contract import OPTIONAL_FIELDS, RECORD_REASONS, FileRejected, ReasonCode
from ingestion.parse import (
    RAW_SCHEMA,
    RawBatch,
    Refusals,
    excerpt,
    optional_to_str,
    parse_jsonl_chunk,
)

JSONL_BLOCK_BYTES = 8 << 20
CSV_BLOCK_BYTES = 8 << 20
_STRING_TYPES = (pa.string(), pa.large_string(), pa.string_view())


def read_jsonl(
    f: BinaryIO, max_line_bytes: int, excerpt_chars: int, block_bytes: int = JSONL_BLOCK_BYTES
) -> Iterator[RawBatch]:
    line_no = 1
    carry = b""
    oversized: bytes | None = None  # head of a line being skipped because it is too long
    first = True
    while True:
        block = f.read(block_bytes)
        if first and block.startswith(b"\xef\xbb\xbf"):
            block = block[3:]  # a UTF-8 byte-order mark is encoding metadata, not content
        first = False
        if not block:
            break
        if oversized is not None:
            end = block.find(b"\n")
            if end < 0:
                continue
            yield _line_too_long(line_no, oversized, excerpt_chars)
            line_no += 1
            oversized, block = None, block[end + 1 :]
        data = carry + block
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
        else:
            chunk, carry = data[: cut + 1], data[cut + 1 :]
            batch = parse_jsonl_chunk(chunk, line_no, excerpt_chars)
            line_no += chunk.count(b"\n")
            yield batch
        if len(carry) > max_line_bytes:
            oversized, carry = carry[: excerpt_chars * 4], b""
    if oversized is not None:
        yield _line_too_long(line_no, oversized, excerpt_chars)
    elif carry:
        yield parse_jsonl_chunk(carry, line_no, excerpt_chars)  # last line without a newline


def _line_too_long(line_no: int, head: bytes, excerpt_chars: int) -> RawBatch:
    refused = Refusals()
    code = ReasonCode.LINE_TOO_LONG
    refused.add(line_no, code, RECORD_REASONS[code], excerpt(head, excerpt_chars))
    return RawBatch(RAW_SCHEMA.empty_table(), refused)


def _as_raw(batch: pa.RecordBatch, first_row: int, excerpt_chars: int) -> RawBatch:
    """Map a CSV/Parquet batch onto RAW_SCHEMA; rows with invalid UTF-8 text are refused."""
    refused = Refusals()
    n = batch.num_rows
    rows = pa.array(range(first_row, first_row + n), pa.int64())
    columns = {}
    for name in ("text", *OPTIONAL_FIELDS):
        if name not in batch.schema.names:
            columns[name] = pa.nulls(n, pa.string())
            continue
        column = batch.column(name)
        try:
            columns[name] = pc.cast(column, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            columns[name] = pa.array([optional_to_str(v) for v in column.to_pylist()], pa.string())
    table = pa.Table.from_arrays([*columns.values(), rows], schema=RAW_SCHEMA)
    try:
        table.validate(full=True)
    except pa.ArrowInvalid:
        table, refused = _drop_invalid_utf8(table, excerpt_chars)
    return RawBatch(table, refused)


def _drop_invalid_utf8(table: pa.Table, excerpt_chars: int) -> tuple[pa.Table, Refusals]:
    refused = Refusals()
    keep = []
    binary = {
        name: table.column(name).cast(pa.binary()).to_pylist() for name in RAW_SCHEMA.names[:-1]
    }
    for i, row in enumerate(table.column("source_row").to_pylist()):
        bad = None
        for name, values in binary.items():
            try:
                if values[i] is not None:
                    values[i].decode("utf-8")
            except UnicodeDecodeError:
                bad = name
                break
        keep.append(bad is None)
        if bad is not None:
            reason = f"{RECORD_REASONS[ReasonCode.INVALID_UTF8]} (field '{bad}')"
            refused.add(
                row, ReasonCode.INVALID_UTF8, reason, excerpt(binary[bad][i], excerpt_chars)
            )
    return table.filter(pa.array(keep)), refused


def read_csv(f: BinaryIO, batch_rows: int, excerpt_chars: int) -> Iterator[RawBatch]:
    try:
        names = pacsv.open_csv(f).schema.names
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise FileRejected(
            ReasonCode.UNPARSEABLE_FILE,
            f"CSV cannot be parsed at its start ({str(exc)[:300]}); write a UTF-8 CSV with "
            "a header row and one record per row",
        ) from exc
    if "text" not in names:
        raise FileRejected(
            ReasonCode.UNPARSEABLE_FILE,
            f"CSV has no 'text' column (columns: {names[:20]}); name the text column 'text'",
        )
    f.seek(0)
    wanted = [name for name in ("text", *OPTIONAL_FIELDS) if name in names]
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        include_columns=wanted,
        strings_can_be_null=False,
    )
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False)
    next_row = 1
    try:
        reader = pacsv.open_csv(f, read_options=read, convert_options=convert)
        for batch in reader:
            for offset in range(0, batch.num_rows, batch_rows):
                part = batch.slice(offset, batch_rows)
                yield _as_raw(part, next_row, excerpt_chars)
                next_row += part.num_rows
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise FileRejected(
            ReasonCode.UNPARSEABLE_FILE,
            f"CSV cannot be parsed after data row {next_row - 1} ({str(exc)[:300]}); "
            "fix the file (UTF-8, one record per row, quoted fields) and land it again",
        ) from exc


def read_parquet(f: BinaryIO, batch_rows: int, excerpt_chars: int) -> Iterator[RawBatch]:
    try:
        parquet = pq.ParquetFile(f)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileRejected(
            ReasonCode.UNPARSEABLE_FILE,
            f"not a readable Parquet file ({str(exc)[:300]}); it may be truncated, land it again",
        ) from exc
    schema = parquet.schema_arrow
    if "text" not in schema.names:
        raise FileRejected(
            ReasonCode.UNPARSEABLE_FILE,
            f"Parquet has no 'text' column (columns: {schema.names[:20]}); name the text column 'text'",
        )
    text_type = schema.field("text").type
    if pa.types.is_dictionary(text_type):
        text_type = text_type.value_type
    if text_type not in _STRING_TYPES and not pa.types.is_null(text_type):
        raise FileRejected(
            ReasonCode.UNPARSEABLE_FILE,
            f"Parquet column 'text' has type {text_type}, not string; write it as a string column",
        )
    wanted = [name for name in ("text", *OPTIONAL_FIELDS) if name in schema.names]
    next_row = 1
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted, use_threads=False):
            yield _as_raw(batch, next_row, excerpt_chars)
            next_row += batch.num_rows
    except (pa.ArrowInvalid, OSError, json.JSONDecodeError) as exc:
        raise FileRejected(
            ReasonCode.UNPARSEABLE_FILE,
            f"Parquet data cannot be read after row {next_row - 1} ({str(exc)[:300]}); "
            "the file is corrupt, land it again",
        ) from exc


def read_file(
    f: BinaryIO, suffix: str, batch_rows: int, max_line_bytes: int, excerpt_chars: int
) -> Iterator[RawBatch]:
    """Dispatch on the (lower-cased) extension; the caller has checked it is supported."""
    if suffix == ".jsonl":
        return read_jsonl(f, max_line_bytes, excerpt_chars)
    if suffix == ".csv":
        return read_csv(f, batch_rows, excerpt_chars)
    return read_parquet(f, batch_rows, excerpt_chars)
