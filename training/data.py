"""Training data: the train split of the corpus Delta table, packed into fixed-length blocks.

Reading pins a Delta table version, so a restarted run reads exactly what the first
attempt read even when new data lands meanwhile. Only records that the shared split rule
(``ingestion.split.is_train``) puts in ``train`` are kept; held-out records never reach
training. Records are ordered by record id, so the order of files in the table does not
change the token stream.

Which blocks each rank trains on, step by step, is ``training.sampling``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import torch
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

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
