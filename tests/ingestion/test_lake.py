"""The lake layer (ingestion.lake): versions and time travel of the corpus table, digest
conversion, and the compact record-id set, including ids sharing their 8-byte sort prefix."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

from ingestion import lake
from ingestion.records import record_id


def test_corpus_version_and_time_travel(tmp_path):
    assert lake.corpus_version(tmp_path) is None
    texts = ["one", "two"]
    write_deltalake(
        tmp_path / "corpus", pa.table({"record_id": [record_id(texts[0])], "text": texts[:1]})
    )
    write_deltalake(
        tmp_path / "corpus",
        pa.table({"record_id": [record_id(texts[1])], "text": texts[1:]}),
        mode="append",
    )
    assert lake.corpus_version(tmp_path) == 1
    assert lake.read_corpus(tmp_path, version=0).column("text").to_pylist() == ["one"]
    assert sorted(lake.read_corpus(tmp_path, columns=["text"]).column(0).to_pylist()) == texts
    ids = lake.IdSet.from_corpus(tmp_path / "corpus")
    assert len(ids) == 2
    assert ids.contains(
        lake.digests(pa.array([record_id("two"), record_id("three")]))
    ).tolist() == [True, False]


def test_digests_are_the_raw_sha256_bytes():
    texts = [f"t{i}" for i in range(10)]
    got = lake.digests(pa.array([record_id(t) for t in texts]))
    assert got.tobytes() == b"".join(hashlib.sha256(t.encode()).digest() for t in texts)


def test_id_set_membership_across_many_parts_and_shared_prefixes():
    rng = np.random.default_rng(0)
    ids = lake.IdSet()
    added = []
    for _ in range(12):  # many adds: parts are merged as the set grows
        part = rng.integers(0, 256, (100, 32), dtype=np.uint8).view("S32").ravel()
        ids.add(part)
        added.append(part)
    stored = np.concatenate(added)
    assert len(ids) == 1200
    absent = rng.integers(0, 256, (50, 32), dtype=np.uint8).view("S32").ravel()
    assert ids.contains(stored).all() and not ids.contains(absent).any()

    # digests equal in their first 8 bytes must still be told apart (and trailing zero bytes kept)
    base = bytes(range(8))
    twins = np.array(
        [base + b"\x01" * 24, base + b"\x02" * 23 + b"\x00", base + b"\x03" * 24], "S32"
    )
    ids.add(twins[:2])
    assert ids.contains(twins).tolist() == [True, True, False]
    assert ids.contains(np.array([base + b"\x02" * 23 + b"\x01"], "S32")).tolist() == [False]
