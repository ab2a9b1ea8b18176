"""Training data: the train split of the corpus Delta table, packed into fixed-length blocks.

Reading pins a Delta table version, so a restarted run reads exactly what the first
attempt read even when new data lands meanwhile. Only records that the shared split rule
(``ingestion.split.is_train``) puts in ``train`` are kept; held-out records never reach
training. Records are ordered by record id, so the order of files in the table does not
change the token stream.

Batches come from ``ResumableBatchSampler``: a permutation per epoch seeded by the run's
seed and the epoch, cut into global batches of ``world_size x batch_size`` blocks, each
rank taking its slice. Its position is one integer (the number of global batches already
taken in the epoch), which the checkpoint saves. The DataLoader gets its own
``torch.Generator`` because otherwise every new iterator draws a seed from the global RNG,
which shifts dropout after a resume (see FIELD_NOTES.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import torch
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from torch.utils.data import DataLoader, Dataset, Sampler

from ingestion.split import is_train
from training.errors import TrainingInputError


@dataclass(frozen=True)
class TrainSplit:
    path: str
    version: int
    texts: list[str]  # ordered by record id
    total_records: int


def latest_version(path: Path) -> int:
    return _open(path, None).version()


def read_train_split(path: Path, version: int, text_column: str = "text") -> TrainSplit:
    """Read the train split of the corpus at ``version``; raise if nothing is left to train on."""
    table = _open(path, version)
    names = table.schema().to_arrow().names
    for column in ("record_id", text_column):
        if column not in names:
            raise TrainingInputError(
                "--data", str(path), f"the table has no {column!r} column (columns: {names})"
            )
    data = table.to_pyarrow_table(columns=["record_id", text_column])
    total = data.num_rows
    if total == 0:
        raise TrainingInputError(
            "--data", str(path), f"the corpus is empty at version {version}; ingest data first"
        )
    data = data.filter(pc.is_valid(data[text_column])).sort_by("record_id")
    ids = data["record_id"].to_pylist()
    texts = data[text_column].to_pylist()
    train = [t for rid, t in zip(ids, texts, strict=True) if is_train(rid) and t.strip()]
    if not train:
        raise TrainingInputError(
            "--data",
            str(path),
            f"none of its {total} records at version {version} is in the train split "
            "(all are held out or blank); ingest more data",
        )
    return TrainSplit(path=str(path), version=version, texts=train, total_records=total)


def _open(path: Path, version: int | None) -> DeltaTable:
    try:
        return DeltaTable(str(path), version=version)
    except TableNotFoundError as exc:
        raise TrainingInputError(
            "--data",
            str(path),
            "is not a Delta table (missing or empty directory); "
            "run the ingestion job or point --data at the corpus table",
        ) from exc
    except Exception as exc:  # deltalake raises plain exceptions for a missing version
        raise TrainingInputError(
            "--data", str(path), f"cannot be read at version {version}: {exc}"
        ) from exc


def pack(token_lists: list[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate token lists and cut the stream into ``[n, seq_len]`` blocks (tail dropped)."""
    stream = [token for tokens in token_lists for token in tokens]
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


class Blocks(Dataset[torch.Tensor]):
    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.blocks[index]


def check_enough(num_blocks: int, world_size: int, batch_size: int) -> None:
    if num_blocks < world_size * batch_size:
        raise TrainingInputError(
            "--nproc-per-node",
            world_size,
            f"the train split packs into {num_blocks} blocks, fewer than one global batch "
            f"({world_size} ranks x data.batch_size {batch_size}); use fewer processes, a "
            "smaller data.batch_size or data.seq_len, or more data",
        )


class ResumableBatchSampler(Sampler[list[int]]):
    """Yield this rank's slice of each global batch, from a saved position onwards."""

    def __init__(
        self, num_blocks: int, batch_size: int, rank: int, world_size: int, seed: int
    ) -> None:
        check_enough(num_blocks, world_size, batch_size)
        self.num_blocks = num_blocks
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = num_blocks // self.global_batch
        self.epoch = 0
        self.start = 0  # global batches already taken in this epoch

    def set_position(self, epoch: int, batch: int) -> None:
        """Start at global batch ``batch`` of ``epoch``; a finished epoch rolls over."""
        if batch >= self.batches_per_epoch:
            epoch, batch = epoch + 1, 0
        self.epoch, self.start = epoch, batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_blocks, generator=generator).tolist()
        for b in range(self.start, self.batches_per_epoch):
            first = b * self.global_batch + self.rank * self.batch_size
            yield order[first : first + self.batch_size]


def batches(
    blocks: torch.Tensor, sampler: ResumableBatchSampler, seed: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Endless ``(epoch, batch_index, batch)`` stream starting at the sampler's position."""
    loader = DataLoader(
        Blocks(blocks),
        batch_sampler=sampler,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
    while True:
        start = sampler.start
        for offset, batch in enumerate(loader):
            yield sampler.epoch, start + offset, batch
        sampler.set_position(sampler.epoch + 1, 0)


def reshard_position(
    epoch: int, batch: int, old_world: int, new_world: int, batch_size: int
) -> tuple[int, int]:
    """Map a position saved under ``old_world`` ranks to the batch index for ``new_world``."""
    consumed = batch * old_world * batch_size
    return epoch, consumed // (new_world * batch_size)
