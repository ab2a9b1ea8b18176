"""Bulk record ids (ingestion.digest): sha256 digests, hex encoding and decoding agree with
``ingestion.records.record_id`` for any text, including sliced and chunked Arrow arrays."""

from __future__ import annotations

import hashlib

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion.digest import from_hex, sha256_digests, to_hex
from ingestion.records import record_id


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(), max_size=30))
def test_bulk_ids_equal_record_id(texts):
    digests = sha256_digests(pa.array(texts, pa.string()))
    # compare raw bytes: numpy drops trailing zero bytes of S32 items in tolist()
    assert digests.tobytes() == b"".join(hashlib.sha256(t.encode()).digest() for t in texts)
    hex_ids = to_hex(digests)
    hex_ids.validate(full=True)
    assert hex_ids.to_pylist() == [record_id(t) for t in texts]
    assert from_hex(hex_ids).tobytes() == digests.tobytes()


def test_from_hex_handles_slices_chunks_and_irregular_layouts():
    ids = [record_id(str(i)) for i in range(10)]
    expected = b"".join(bytes.fromhex(i) for i in ids)
    array = pa.array(ids)
    assert from_hex(array.slice(3, 4)).tobytes() == expected[3 * 32 : 7 * 32]
    assert from_hex(pa.chunked_array([array[:5], array[5:]])).tobytes() == expected
    assert from_hex(pa.array(ids, pa.large_string())).tobytes() == expected
    assert len(from_hex(pa.array([], pa.string()))) == 0
