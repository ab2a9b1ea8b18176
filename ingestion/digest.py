"""Record ids in bulk: sha256 digests of many texts, and conversion between hex ids and raw
32-byte digests, without a Python string per id (whole Arrow buffers at once)."""

from __future__ import annotations

import binascii
import hashlib

import numpy as np
import pyarrow as pa


def sha256_digests(texts: pa.Array) -> np.ndarray:
    """sha256 of each UTF-8 text (no nulls) as a numpy ``S32`` array."""
    sha256 = hashlib.sha256
    blobs = texts.cast(pa.binary()).to_pylist()  # bytes directly: no str decode and re-encode
    return np.frombuffer(b"".join([sha256(b).digest() for b in blobs]), "S32")


def to_hex(digests: np.ndarray) -> pa.StringArray:
    """Raw digests -> an Arrow string array of 64 lowercase hex characters each."""
    n = len(digests)
    chars = binascii.hexlify(digests.tobytes())
    offsets = np.arange(0, 64 * (n + 1), 64, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars)])


def from_hex(record_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-hex record ids -> raw digests (numpy ``S32``)."""
    if isinstance(record_ids, pa.ChunkedArray):
        record_ids = record_ids.combine_chunks()
    n = len(record_ids)
    if n == 0:
        return np.empty(0, "S32")
    if record_ids.type == pa.string() and record_ids.null_count == 0:
        offsets = np.frombuffer(record_ids.buffers()[1], np.int32)[record_ids.offset :][: n + 1]
        if offsets[-1] - offsets[0] == 64 * n and np.all(np.diff(offsets) == 64):
            data = memoryview(record_ids.buffers()[2])[offsets[0] : offsets[-1]]
            return np.frombuffer(binascii.unhexlify(data), "S32")
    return np.frombuffer(b"".join(bytes.fromhex(i) for i in record_ids.to_pylist()), "S32")
