"""Contract: training reads only the train split at a pinned version.

Data added to the table after the pin is not read; packing drops the incomplete tail.
"""

from __future__ import annotations

from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records
from ingestion.split import is_train
from training.data import latest_version, pack, read_train_split


def test_only_the_train_split_at_the_pinned_version(tmp_path, tr):
    table = tmp_path / "corpus"
    first = [normalise_text(r["text"]) for r in generate_records(600, seed=3)]
    tr.write_corpus(table, first)
    pinned = latest_version(table)
    late = next(t for i in range(100) if is_train(record_id(t := f"Q: landed late {i} A: 1")))
    tr.write_corpus(table, [late])
    split = read_train_split(table, pinned)
    expected = sorted((record_id(t), t) for t in set(first) if is_train(record_id(t)))
    assert split.texts == [t for _, t in expected]
    assert len(split.texts) < len(set(first)), "some records must be held out"
    assert late not in split.texts
    assert late in read_train_split(table, latest_version(table)).texts


def test_pack_drops_the_tail():
    out = pack([[1, 2, 3], [4, 5, 6, 7]], seq_len=3)
    assert out.tolist() == [[1, 2, 3], [4, 5, 6]]
