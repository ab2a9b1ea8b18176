"""Exact data accounting across world-size changes: a sampler positioned by a global offset.

An epoch is a permutation of every block, seeded by the run's seed and the epoch. The
data position is one integer, ``consumed``: how many blocks of the epoch's permutation the
job has already trained on, whatever the world size was. Each step takes the next global
batch from that offset and splits it over the ranks of the current group, so a group that
re-forms at a different size after a host loss or join simply continues from the same
offset: within an epoch every block is trained on exactly once.

A global batch is ``world_size x batch_size`` blocks, except at the end of an epoch: the
last step takes every block left (it never drops a tail), and a step that would leave
fewer blocks than ranks takes them too. Ranks then get unequal slices; ``Slice.scale``
weights each rank's mean loss so the averaged gradient is the mean over the global batch,
and a rank with no block left trains on a placeholder block with weight 0 (it must still
join the gradient all-reduce). With equal slices the scale is exactly 1.

Blocks are indexed directly rather than through a DataLoader: there is nothing to load
(the packed corpus is one tensor in memory), and a DataLoader iterator draws a seed from
the global RNG, which shifts dropout after a resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from training.errors import TrainingInputError


@dataclass(frozen=True)
class Slice:
    """This rank's share of one global batch."""

    epoch: int
    start: int  # offset of the global batch in the epoch's permutation
    size: int  # blocks in the global batch
    ids: list[int]  # block ids this rank trains on (empty: nothing left for it)
    scale: float  # loss weight: world_size x len(ids) / size

    @property
    def end(self) -> int:
        return self.start + self.size


def check_enough(num_blocks: int, world_size: int, batch_size: int) -> None:
    if num_blocks < world_size * batch_size:
        raise TrainingInputError(
            "--nproc-per-node",
            world_size,
            f"the train split packs into {num_blocks} blocks, fewer than one global batch "
            f"({world_size} ranks x data.batch_size {batch_size}); use fewer processes, a "
            "smaller data.batch_size or data.seq_len, or more data",
        )


def epoch_order(num_blocks: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_blocks, generator=generator).tolist()


def global_batch_size(remaining: int, world_size: int, batch_size: int) -> int:
    """Blocks the next step takes when ``remaining`` are left in the epoch."""
    full = world_size * batch_size
    if remaining == full or remaining - full >= world_size:
        return full
    return remaining  # the epoch's tail: take it all rather than drop it


def split(size: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank`` in a global batch of ``size``: contiguous, sizes differ by 1."""
    base, extra = divmod(size, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class GlobalOffsetSampler:
    """This rank's slices of the global batches, from ``(epoch, consumed)`` onwards, forever."""

    def __init__(
        self, num_blocks: int, batch_size: int, rank: int, world_size: int, seed: int
    ) -> None:
        check_enough(num_blocks, world_size, batch_size)
        self.num_blocks, self.batch_size = num_blocks, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.consumed = 0, 0

    def set_position(self, epoch: int, consumed: int) -> None:
        if not 0 <= consumed <= self.num_blocks:
            raise ValueError(f"data position {consumed} outside an epoch of {self.num_blocks}")
        if consumed == self.num_blocks:  # the epoch was finished: the next one starts
            epoch, consumed = epoch + 1, 0
        self.epoch, self.consumed = epoch, consumed

    def __iter__(self) -> Iterator[Slice]:
        while True:
            order = epoch_order(self.num_blocks, self.seed, self.epoch)
            while self.consumed < self.num_blocks:
                start = self.consumed
                size = global_batch_size(self.num_blocks - start, self.world_size, self.batch_size)
                lo, hi = split(size, self.world_size, self.rank)
                ids = order[start + lo : start + hi]
                scale = (
                    1.0
                    if size == self.world_size * self.batch_size
                    else (self.world_size * len(ids) / size)
                )
                self.consumed = start + size
                yield Slice(self.epoch, start, size, ids, scale)
            self.epoch, self.consumed = self.epoch + 1, 0


def batch_of(blocks: torch.Tensor, s: Slice) -> torch.Tensor:
    """The tensor for a slice; a placeholder block (weight 0) when the slice is empty."""
    return blocks[s.ids] if s.ids else blocks[:1]
