"""Contract: the held-out sample is exactly the split rule's held-out records at the requested
data version, ordered by record id, bounded, and identical on every read."""

from __future__ import annotations

import deltalake
import pytest

from evaluation.heldout import HeldoutDataError, load_heldout
from ingestion.records import record_id
from ingestion.sample import parse_task
from ingestion.split import split_of


def test_sample_is_heldout_only_sorted_and_bounded(corpus):
    sample = load_heldout(corpus, 0, max_examples=50)
    assert len(sample.texts) == 50 and len(sample.tasks) == 50
    ids = [record_id(t) for t in sample.texts]
    assert all(split_of(i) == "heldout" for i in ids)
    assert ids == sorted(ids)
    assert sample.tasks[0] == parse_task(sample.texts[0])
    assert sample.heldout_records > 50
    assert load_heldout(corpus, 0, max_examples=50) == sample


def test_reads_the_requested_data_version(tmp_path, corpus_writer):
    write_corpus = corpus_writer
    path = write_corpus(tmp_path / "lake", 2000, seed=1)
    v0 = load_heldout(path, 0, max_examples=10_000)
    write_corpus(path, 2000, seed=2)  # appends: version 1
    assert deltalake.DeltaTable(str(path)).version() == 1
    assert load_heldout(path, 0, max_examples=10_000) == v0
    v1 = load_heldout(path, 1, max_examples=10_000)
    assert v1.data_version == 1 and v1.heldout_records > v0.heldout_records


def test_missing_table_names_path_and_version(tmp_path):
    with pytest.raises(HeldoutDataError, match="data_version=3"):
        load_heldout(tmp_path / "nowhere", 3, max_examples=10)
    with pytest.raises(ValueError, match="max_examples"):
        load_heldout(tmp_path / "nowhere", 0, max_examples=0)
