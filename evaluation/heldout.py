"""The held-out evaluation sample: which corpus records a model is judged on.

Records come from the corpus Delta table at one data version, keep only those the shared
split rule (``ingestion.split.split_of``) holds out, and are ordered by record id before
the sample is cut to its bounded size. The sample is therefore a pure function of
(table, version, size): the challenger and the champion, and a rerun next week, see
exactly the same examples. Tasks are the records ``parse_task`` understands; texts (all
held-out records, tasks or not) feed perplexity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deltalake import DeltaTable

from ingestion.sample import Task, parse_task
from ingestion.split import split_of


class HeldoutDataError(ValueError):
    """The corpus table cannot provide a usable held-out sample."""


@dataclass(frozen=True)
class HeldoutSample:
    data_path: str
    data_version: int
    texts: tuple[str, ...]  # held-out texts for perplexity, ordered by record id
    tasks: tuple[Task, ...]  # parseable held-out tasks for exact match, same order
    heldout_records: int  # held-out records in the table, before the size bound


def load_heldout(
    data_path: str | Path, data_version: int | None, max_examples: int
) -> HeldoutSample:
    """Read the held-out sample of ``data_path`` at ``data_version`` (latest when ``None``)."""
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    try:
        table = DeltaTable(str(data_path), version=data_version)
    except Exception as exc:  # deltalake raises several unrelated types for a missing table
        raise HeldoutDataError(
            f"cannot open corpus table data_path={str(data_path)!r} at "
            f"data_version={data_version!r}: {exc}; check the path and that the version exists"
        ) from exc
    columns = {field.name for field in table.schema().fields}
    if not {"record_id", "text"} <= columns:
        raise HeldoutDataError(
            f"corpus table {str(data_path)!r} lacks record_id/text columns (has {sorted(columns)})"
        )
    rows = table.to_pyarrow_table(columns=["record_id", "text"]).to_pylist()
    heldout = sorted(
        (r["record_id"], r["text"])
        for r in rows
        if r["text"] and split_of(r["record_id"]) == "heldout"
    )
    if not heldout:
        raise HeldoutDataError(
            f"corpus table {str(data_path)!r} version {table.version()} has no held-out records; "
            "ingest more data before evaluating"
        )
    texts = tuple(text for _, text in heldout[:max_examples])
    tasks: list[Task] = []
    for _, text in heldout:
        task = parse_task(text)
        if task is not None:
            tasks.append(task)
            if len(tasks) == max_examples:
                break
    return HeldoutSample(
        data_path=str(data_path),
        data_version=table.version(),
        texts=texts,
        tasks=tuple(tasks),
        heldout_records=len(heldout),
    )
