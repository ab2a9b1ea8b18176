"""Contract: training reads only the train split at a pinned version, in a resumable order.

The batch order after ``set_position`` equals the tail of the uninterrupted order, epochs
roll over, ranks take disjoint slices of each global batch, and data added to the table
after the pin is not read.
"""

from __future__ import annotations

import torch

from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records
from ingestion.split import is_train
from training.data import ResumableBatchSampler, batches, latest_version, pack, read_train_split


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


def _order(num_blocks, rank, world, start=(0, 0), n=12):
    blocks = torch.arange(num_blocks).view(num_blocks, 1)
    sampler = ResumableBatchSampler(num_blocks, 2, rank, world, seed=7)
    sampler.set_position(*start)
    stream = batches(blocks, sampler, seed=7)
    return [
        (e, b, batch.flatten().tolist()) for (e, b, batch), _ in zip(stream, range(n), strict=False)
    ]


def test_resume_continues_the_same_order_across_epochs():
    full = _order(20, rank=0, world=2, n=12)  # 5 batches per epoch: crosses two epoch ends
    assert [e for e, _, _ in full] == [0] * 5 + [1] * 5 + [2] * 2
    resumed = _order(20, rank=0, world=2, start=(0, 4), n=8)
    assert resumed == full[4:12]
    rolled = _order(20, rank=0, world=2, start=(0, 5), n=3)
    assert rolled == full[5:8]


def test_ranks_take_disjoint_slices():
    r0, r1 = _order(20, 0, 2, n=5), _order(20, 1, 2, n=5)
    seen = [x for _, _, b in r0 + r1 for x in b]
    assert len(seen) == len(set(seen)) == 20


def test_pack_drops_the_tail():
    out = pack([[1, 2, 3], [4, 5, 6, 7]], seq_len=3)
    assert out.tolist() == [[1, 2, 3], [4, 5, 6]]
