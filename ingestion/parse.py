"""Record parsing and screening: raw lines and columns in, accepted records and refusals out.

Two stages, shared by every format. The readers turn a file into *raw batches*: an Arrow
table of ``text``, the optional fields (strings or null) and ``source_row``, plus the rows
already refused while parsing (bad JSON, bad UTF-8, text not a string). ``screen`` then applies
the record rules to a raw batch with vectorised Arrow kernels: normalise line endings, refuse
missing, blank and over-long text, and compute the record id.

JSONL has a fast path: a whole chunk of lines parsed by ``pyarrow.json``. It is taken only
when it cannot disagree with the per-line parser (``json.loads``, the reference): the chunk
is valid UTF-8, every line starts with ``{`` (so no blank line, and no top-level ``null``,
which crashes pyarrow 25's JSON reader), it has no byte-order mark and no ``Inf`` token
(RapidJSON accepts it, Python does not), it parses against an all-string schema (a number
where a string belongs is an error there, so mixed types fall back), and it yields exactly
one row per line. Anything else is parsed line by line. A fuzz test holds the two equal.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from ingestion.contract import OPTIONAL_FIELDS, RECORD_REASONS, ReasonCode
from ingestion.digest import sha256_digests, to_hex

RAW_SCHEMA = pa.schema(
    [("text", pa.string())]
    + [(name, pa.string()) for name in OPTIONAL_FIELDS]
    + [("source_row", pa.int64())]
)
ACCEPTED_SCHEMA = pa.schema(
    [("record_id", pa.string()), ("text", pa.string())]
    + [(name, pa.string()) for name in OPTIONAL_FIELDS]
    + [("source_row", pa.int64())]
)
_JSON_SCHEMA = pa.schema([(name, pa.string()) for name in ("text", *OPTIONAL_FIELDS)])
_JSON_PARSE = pajson.ParseOptions(explicit_schema=_JSON_SCHEMA, unexpected_field_behavior="ignore")
_INF_TOKEN = re.compile(rb"[:,\[]\s*-?Inf")
_JSON_BLANK = b" \t\r\n"


@dataclass
class Refusals:
    """Refused rows of one file, column-wise, in the order found."""

    rows: list[int | None] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    excerpts: list[str] = field(default_factory=list)

    def add(self, row: int | None, code: ReasonCode, reason: str, excerpt: str) -> None:
        self.rows.append(row)
        self.codes.append(str(code))
        self.reasons.append(reason)
        self.excerpts.append(excerpt)

    def extend(self, other: Refusals) -> None:
        self.rows += other.rows
        self.codes += other.codes
        self.reasons += other.reasons
        self.excerpts += other.excerpts

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class RawBatch:
    table: pa.Table  # RAW_SCHEMA
    refused: Refusals


def excerpt(value: bytes | str, limit: int) -> str:
    if isinstance(value, bytes):
        value = value[: limit * 4].decode("utf-8", errors="backslashreplace")
    # an unpaired surrogate cannot be stored as UTF-8; show it escaped instead
    return value[:limit].encode("utf-8", errors="backslashreplace").decode("utf-8")


def optional_to_str(value: object) -> str | None:
    """Store an optional field as a string: scalars via ``str``, arrays/objects as JSON."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _is_utf8_clean(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_json_line(line: bytes) -> tuple | tuple[ReasonCode, str] | None:
    """Parse one JSONL line (without its newline).

    Returns ``None`` for a blank line, ``(text, id, source, created_at)`` for a record the
    parser accepts, or ``(ReasonCode, detail)`` for a refused one.
    """
    if not line.strip(_JSON_BLANK):
        return None
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ReasonCode.INVALID_UTF8, f"byte {exc.start} is not UTF-8"
    try:
        obj = json.loads(decoded)
    except (ValueError, RecursionError) as exc:
        return ReasonCode.INVALID_JSON, str(exc)[:200]
    if not isinstance(obj, dict):
        return ReasonCode.INVALID_JSON, f"a JSON {type(obj).__name__}, not an object"
    text = obj.get("text")
    if text is None:
        return ReasonCode.MISSING_TEXT, "no 'text' key" if "text" not in obj else "'text' is null"
    if not isinstance(text, str):
        return ReasonCode.TEXT_NOT_STRING, f"'text' is a JSON {type(text).__name__}"
    values = [text] + [optional_to_str(obj.get(name)) for name in OPTIONAL_FIELDS]
    for name, value in zip(("text", *OPTIONAL_FIELDS), values, strict=True):
        if value is not None and not _is_utf8_clean(value):
            return ReasonCode.INVALID_UTF8, f"'{name}' holds an unpaired surrogate escape"
    return tuple(values)


def _every_line_opens_an_object(chunk: bytes) -> bool:
    # also rules out blank lines, and top-level ``null`` (which crashes pyarrow 25's reader)
    body = chunk[:-1] if chunk.endswith(b"\n") else chunk
    return body.startswith(b"{") and body.count(b"\n{") == body.count(b"\n")


def _fast_jsonl(chunk: bytes, first_line: int, lines: int) -> pa.Table | None:
    if b"\xef\xbb\xbf" in chunk or not _every_line_opens_an_object(chunk):
        return None
    if b"Inf" in chunk and _INF_TOKEN.search(chunk):
        return None
    try:
        # the whole chunk, not only the fields read: the reference parser decodes whole lines
        pa.array([chunk], pa.large_binary()).view(pa.large_string()).validate(full=True)
        table = pajson.read_json(io.BytesIO(chunk), parse_options=_JSON_PARSE)
    except (UnicodeDecodeError, pa.ArrowInvalid):
        return None
    if table.num_rows != lines:
        return None
    rows = pa.array(np.arange(first_line, first_line + lines, dtype=np.int64))
    columns = [table.column(name).combine_chunks() for name in _JSON_SCHEMA.names]
    return pa.Table.from_arrays([*columns, rows], schema=RAW_SCHEMA)


def parse_jsonl_chunk(
    chunk: bytes, first_line: int, excerpt_chars: int, fast: bool = True
) -> RawBatch:
    """Parse whole JSONL lines; ``first_line`` is the 1-based number of the chunk's first line.
    ``fast=False`` forces the per-line reference parser."""
    count = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
    table = _fast_jsonl(chunk, first_line, count) if fast and chunk else None
    if table is not None:
        return RawBatch(table, Refusals())
    lines = chunk.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    refused = Refusals()
    columns: list[list] = [[] for _ in RAW_SCHEMA.names]
    for number, line in enumerate(lines, start=first_line):
        parsed = parse_json_line(line)
        if parsed is None:
            continue
        if isinstance(parsed[0], ReasonCode):
            code, detail = parsed
            refused.add(
                number, code, f"{RECORD_REASONS[code]} ({detail})", excerpt(line, excerpt_chars)
            )
            continue
        for column, value in zip(columns, (*parsed, number), strict=True):
            column.append(value)
    return RawBatch(
        pa.Table.from_pydict(dict(zip(RAW_SCHEMA.names, columns, strict=True)), RAW_SCHEMA), refused
    )


def _record_excerpt(table: pa.Table, index: int, limit: int) -> str:
    row = {name: table.column(name)[index].as_py() for name in ("text", *OPTIONAL_FIELDS)}
    if isinstance(row["text"], str):
        row["text"] = row["text"][:limit]
    return excerpt(
        json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False), limit
    )


def screen(raw: RawBatch, max_text_chars: int, excerpt_chars: int) -> tuple[pa.Table, Refusals]:
    """Apply the record rules to a raw batch; returns (accepted ACCEPTED_SCHEMA table, refusals)."""
    table = raw.table
    refused = Refusals()
    refused.extend(raw.refused)
    text = table.column("text").combine_chunks()
    normal = pc.replace_substring(pc.replace_substring(text, "\r\n", "\n"), "\r", "\n")
    length = pc.utf8_length(normal)
    missing = pc.is_null(normal)
    blank = pc.or_(pc.equal(length, 0), pc.utf8_is_space(normal))
    too_long = pc.greater(length, max_text_chars)
    bad = pc.fill_null(pc.or_(blank, too_long), True)
    if pc.any(bad).as_py():
        for index in pc.indices_nonzero(bad).to_pylist():
            if missing[index].as_py():
                code = ReasonCode.MISSING_TEXT
            elif too_long[index].as_py():
                code = ReasonCode.TEXT_TOO_LONG
            else:
                code = ReasonCode.EMPTY_TEXT
            detail = (
                f"{length[index].as_py()} characters" if code is ReasonCode.TEXT_TOO_LONG else ""
            )
            reason = RECORD_REASONS[code] + (
                f" ({detail}, limit {max_text_chars})" if detail else ""
            )
            refused.add(
                table.column("source_row")[index].as_py(),
                code,
                reason,
                _record_excerpt(table, index, excerpt_chars),
            )
        keep = pc.invert(bad)
        table = table.filter(keep)
        normal = normal.filter(keep)
    ids = to_hex(sha256_digests(normal))
    optional = []
    for name in OPTIONAL_FIELDS:
        column = table.column(name).combine_chunks()
        # an empty optional value carries no information: store it as null in every format
        optional.append(pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column))
    accepted = pa.Table.from_arrays(
        [ids, normal, *optional, table.column("source_row").combine_chunks()],
        schema=ACCEPTED_SCHEMA,
    )
    order = sorted(range(len(refused)), key=lambda i: refused.rows[i] or 0)
    if order != list(range(len(refused))):
        refused = Refusals(
            [refused.rows[i] for i in order],
            [refused.codes[i] for i in order],
            [refused.reasons[i] for i in order],
            [refused.excerpts[i] for i in order],
        )
    return accepted, refused
