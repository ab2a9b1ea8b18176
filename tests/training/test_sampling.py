"""Contract: the data position is a global offset, so accounting is exact at any world size.

Resuming at a saved ``(epoch, consumed)`` continues the uninterrupted order; ranks take
disjoint slices; whatever sequence of world sizes the group goes through, every block of
an epoch is trained on exactly once (the epoch's tail included); unequal slices carry
loss weights that average to the global mean.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from training.sampling import GlobalOffsetSampler, global_batch_size


def _steps(n, world, start=(0, 0), count=10, bs=2):
    """Every rank's slices for ``count`` steps from ``start``: list of per-step rank lists."""
    samplers = [GlobalOffsetSampler(n, bs, r, world, seed=7) for r in range(world)]
    for s in samplers:
        s.set_position(*start)
    streams = [iter(s) for s in samplers]
    return [[next(it) for it in streams] for _ in range(count)]


def test_resume_continues_the_same_order_across_epochs():
    full = _steps(20, world=2, count=12)  # 5 full steps per epoch: crosses two epoch ends
    assert [s[0].epoch for s in full] == [0] * 5 + [1] * 5 + [2] * 2
    resumed = _steps(20, world=2, start=(0, 16), count=8)
    assert resumed == full[4:12]
    rolled = _steps(20, world=2, start=(0, 20), count=3)  # a finished epoch rolls over
    assert rolled == full[5:8]


def test_ranks_take_disjoint_slices_of_equal_weight():
    step = _steps(20, world=2, count=5)
    ids = [i for parts in step for p in parts for i in p.ids]
    assert sorted(ids) == list(range(20))
    assert {p.scale for parts in step for p in parts} == {1.0}


def test_the_tail_of_an_epoch_is_trained_on_not_dropped():
    steps = _steps(23, world=2, count=6, bs=4)  # 8 per step: 8, 8, then the last 7
    sizes = [parts[0].size for parts in steps[:3]]
    assert sizes == [8, 8, 7]
    tail = steps[2]
    assert [len(p.ids) for p in tail] == [4, 3]
    # DDP averages the ranks' weighted means: each block must then weigh 1 / global size.
    for p in tail:
        assert abs(p.scale / len(p.ids) / 2 - 1 / 7) < 1e-12
    assert steps[3][0].epoch == 1


def test_more_ranks_than_blocks_left_gives_empty_slices_weight_zero():
    sampler = GlobalOffsetSampler(20, 2, 3, 4, seed=1)
    sampler.set_position(0, 18)  # two blocks left for four ranks
    part = next(iter(sampler))
    assert part.ids == [] and part.scale == 0.0 and part.size == 2


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=8, max_value=60),
    worlds=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=6),
    lengths=st.lists(st.integers(min_value=1, max_value=5), min_size=6, max_size=6),
)
def test_any_sequence_of_world_sizes_trains_each_block_once_per_epoch(n, worlds, lengths):
    bs, epoch, consumed, seen = 2, 0, 0, []
    for world, length in zip(worlds, lengths, strict=False):
        if n < world * bs:
            continue
        for parts in _steps(n, world, start=(epoch, consumed), count=length, bs=bs):
            assert global_batch_size(n - parts[0].start, world, bs) == parts[0].size
            seen.append((parts[0].epoch, [i for p in parts for i in p.ids]))
            epoch, consumed = parts[0].epoch, parts[0].end
    by_epoch: dict[int, list[int]] = {}
    for e, ids in seen:
        by_epoch.setdefault(e, []).extend(ids)
    for e, ids in by_epoch.items():
        assert len(ids) == len(set(ids)), f"epoch {e} trained a block twice"
        if e < max(by_epoch):
            assert sorted(ids) == list(range(n)), f"epoch {e} missed blocks"
