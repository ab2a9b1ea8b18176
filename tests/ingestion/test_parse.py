"""Record rules of the ingestion contract (ingestion.parse): JSON line parsing, screening,
normalisation and record ids; fuzzed so that no input makes the parser raise, every record is
accounted for, and the pyarrow fast path never disagrees with the per-line reference parser."""

from __future__ import annotations

import json

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestion.contract import ReasonCode
from ingestion.parse import (
    RAW_SCHEMA,
    RawBatch,
    Refusals,
    parse_json_line,
    parse_jsonl_chunk,
    screen,
)
from ingestion.records import normalise_text, record_id

LIMIT = 50


def _screen_chunk(chunk: bytes, fast: bool = True, limit: int = LIMIT):
    return screen(parse_jsonl_chunk(chunk, 1, 64, fast=fast), limit, 64)


def _codes(refused: Refusals) -> list[tuple[int | None, str]]:
    return list(zip(refused.rows, refused.codes, strict=True))


def test_each_record_rule_has_its_reason_code():
    lines = [
        json.dumps({"text": "good one", "id": 7, "source": True, "created_at": None}),
        '{"text": "unterminated',
        "[1, 2]",
        json.dumps({"id": "x"}),
        json.dumps({"text": None}),
        json.dumps({"text": 42}),
        json.dumps({"text": " \t\r\n "}),
        json.dumps({"text": "x" * (LIMIT + 1)}),
        '{"text": "bad \\ud800 surrogate"}',
        "",
        "   ",
    ]
    chunk = "\n".join(lines).encode() + b"\n" + b'{"text": "\xff\xfe"}\n'
    accepted, refused = _screen_chunk(chunk)
    assert accepted.column("text").to_pylist() == ["good one"]
    assert accepted.column("id").to_pylist() == ["7"]  # non-string scalars become str()
    assert accepted.column("source").to_pylist() == ["True"]
    assert accepted.column("source_row").to_pylist() == [1]
    assert _codes(refused) == [
        (2, "invalid_json"),
        (3, "invalid_json"),
        (4, "missing_text"),
        (5, "missing_text"),
        (6, "text_not_string"),
        (7, "empty_text"),
        (8, "text_too_long"),
        (9, "invalid_utf8"),
        (12, "invalid_utf8"),  # blank lines 10 and 11 are skipped but keep their numbers
    ]
    assert all(
        reason and excerpt is not None
        for reason, excerpt in zip(refused.reasons, refused.excerpts, strict=True)
    )


def test_line_endings_are_normalised_and_record_id_is_sha256_of_normal_text():
    chunk = (json.dumps({"text": "a\r\nb\rc"}) + "\n").encode()
    accepted, refused = _screen_chunk(chunk)
    assert len(refused) == 0
    assert accepted.column("text").to_pylist() == ["a\nb\nc"]
    assert accepted.column("record_id").to_pylist() == [record_id("a\nb\nc")]


def test_length_limit_counts_characters_after_normalising():
    text = "é" * (LIMIT - 1) + "\r\n"  # LIMIT+1 characters raw, LIMIT normalised, more bytes
    accepted, refused = _screen_chunk((json.dumps({"text": text}) + "\n").encode())
    assert accepted.num_rows == 1 and len(refused) == 0


def test_optional_objects_are_stored_as_json_and_empty_values_as_null():
    line = json.dumps({"text": "t", "id": {"k": [1, 2]}, "source": "", "created_at": 1.5})
    accepted, _ = _screen_chunk((line + "\n").encode())
    row = accepted.to_pylist()[0]
    assert (row["id"], row["source"], row["created_at"]) == ('{"k":[1,2]}', None, "1.5")


def test_parse_json_line_reports_blank_as_none():
    assert parse_json_line(b" \t\r") is None
    assert parse_json_line(b'{"text": "x"}') == ("x", None, None, None)
    assert parse_json_line(b"{}")[0] is ReasonCode.MISSING_TEXT


def test_screen_keeps_rows_of_columnar_sources():
    table = pa.table(
        {
            "text": ["ok", None, "", "  "],
            "id": [None, None, None, None],
            "source": [None] * 4,
            "created_at": [None] * 4,
            "source_row": [1, 2, 3, 4],
        },
        schema=RAW_SCHEMA,
    )
    accepted, refused = screen(RawBatch(table, Refusals()), LIMIT, 16)
    assert accepted.column("source_row").to_pylist() == [1]
    assert _codes(refused) == [(2, "missing_text"), (3, "empty_text"), (4, "empty_text")]


# --- fuzzing ---------------------------------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_texts = st.text(alphabet=st.sampled_from("ab \t\r\n\u00e9\u2028\x00😀"), max_size=60) | st.text(
    max_size=80
)
_records = st.fixed_dictionaries(
    {},
    optional={
        "text": _texts | _json_values,
        "id": _json_values,
        "source": _json_values,
        "created_at": _json_values,
        "other": _json_values,
    },
)
_lines = st.one_of(
    _records.map(lambda r: json.dumps(r).encode()),
    _records.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.sampled_from(
        [
            b"",
            b"  ",
            b"\r",
            b'{"text": Inf}',
            b'{"text": "a", "x": NaN}',
            b"\xef\xbb\xbf{}",
            b'{"text": "a", "text": 1}',
            b'{"text": "a"} {"text": "b"}',
            b'{"text":"\\ud800"}',
        ]
    ),
)


def _check_invariants(chunk: bytes, n_lines: int, accepted: pa.Table, refused: Refusals) -> None:
    blank = sum(1 for line in chunk.split(b"\n")[:n_lines] if not line.strip(b" \t\r"))
    assert accepted.num_rows + len(refused) == n_lines - blank  # every record accounted for
    rows = accepted.column("source_row").to_pylist() + [r for r in refused.rows if r is not None]
    assert sorted(rows) == sorted(set(rows)) and all(1 <= r <= n_lines for r in rows)
    for text, rid in zip(
        accepted.column("text").to_pylist(), accepted.column("record_id").to_pylist(), strict=True
    ):
        assert text.strip() != ""
        assert len(text) <= LIMIT
        assert normalise_text(text) == text
        assert rid == record_id(text)
    assert all(len(e) <= 64 for e in refused.excerpts)
    assert set(refused.codes) <= {c.value for c in ReasonCode}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_lines, max_size=12), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_fuzzed_lines_never_raise_and_fast_path_agrees_with_reference(lines, eol, final_eol):
    chunk = eol.join(lines) + (eol if final_eol and lines else b"")
    n_lines = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") or not chunk else 1)
    fast = _screen_chunk(chunk, fast=True)
    slow = _screen_chunk(chunk, fast=False)
    _check_invariants(chunk, n_lines, *fast)
    assert fast[0].equals(slow[0])
    assert _codes(fast[1]) == _codes(slow[1])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=20))
def test_fuzzed_text_values_are_accepted_exactly_when_meaningful(texts):
    chunk = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts)
    accepted, refused = _screen_chunk(chunk)
    expected = [
        normalise_text(t)
        for t in texts
        if t.strip()
        and len(normalise_text(t)) <= LIMIT
        and t.encode("utf-8", "surrogatepass") == t.encode("utf-8", "ignore")
    ]
    assert accepted.column("text").to_pylist() == expected
    assert accepted.num_rows + len(refused) == len(texts)
