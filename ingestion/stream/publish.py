"""The publisher: a file's records sent to the stream, one message per record.

JSONL lines are sent byte for byte (blank lines skipped), so the consumer applies the record
contract to exactly what the file holds and a broken line is quarantined there, with its
reason, as it would be from the landing zone. CSV and Parquet rows are read by the landing
zone's readers and sent as JSON objects of ``text`` and the optional fields; rows those
readers already refuse (e.g. bytes that are not UTF-8) cannot be expressed as JSON and are
reported, not sent.

Each message carries ``Nats-Msg-Id = <file sha256 prefix>:<row>``, so publishing the same file
again within the stream's duplicate window (2 minutes) stores nothing twice at the broker, and
a window of publishes that timed out is simply sent again. Publishes go out asynchronously in
windows, each awaited with a timeout, retried a bounded number of times.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats.errors

from ingestion.config import IngestConfig
from ingestion.contract import OPTIONAL_FIELDS, SUPPORTED_EXTENSIONS, FileRejected
from ingestion.readers import read_file
from ingestion.stream.jetstream import JetStreamConfig, connect, ensure_streams

WINDOW = 1000
ATTEMPTS = 4


@dataclass(frozen=True)
class PublishReport:
    path: Path
    published: int  # messages the stream acknowledged (a broker-side duplicate included)
    duplicates: int  # of those, already in the stream (same Nats-Msg-Id within the window)
    not_sent: int  # rows the reader refused before they could be encoded
    first_sequence: int | None
    last_sequence: int | None
    seconds: float


def _file_id(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:16]


def iter_messages(path: Path, max_text_chars: int = 100_000) -> Iterator[tuple[int, bytes] | int]:
    """(row, body) per record; an ``int`` n for n rows the reader refused (not sendable)."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"{path}: extension {suffix or '(none)'!r} is not one of "
            f"{', '.join(SUPPORTED_EXTENSIONS)}; convert the file"
        )
    if suffix == ".jsonl":
        with path.open("rb") as f:
            for row, line in enumerate(f, start=1):
                body = line.rstrip(b"\r\n")
                if body.strip():
                    yield row, body
        return
    config = IngestConfig(
        landing_dir=path.parent, lake_dir=path.parent, max_text_chars=max_text_chars
    )
    with path.open("rb") as f:
        for raw in read_file(f, suffix, 10_000, config.max_line_bytes, config.excerpt_chars):
            if len(raw.refused):
                yield len(raw.refused)
            names = ("text", *OPTIONAL_FIELDS)
            columns = [raw.table.column(n).to_pylist() for n in names]
            rows = raw.table.column("source_row").to_pylist()
            for i, row in enumerate(rows):
                record = {n: col[i] for n, col in zip(names, columns, strict=True)}
                record = {k: v for k, v in record.items() if v is not None or k == "text"}
                yield row, json.dumps(record, ensure_ascii=False).encode("utf-8")


async def _send_window(js, subject: str, window: list[tuple[str, bytes]], timeout_s: float):
    for attempt in range(1, ATTEMPTS + 1):
        try:
            futures = [
                await js.publish_async(subject, body, headers={"Nats-Msg-Id": msg_id})
                for msg_id, body in window
            ]
            return await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            if attempt == ATTEMPTS:
                raise RuntimeError(
                    f"the broker did not acknowledge {len(window)} messages after {ATTEMPTS} "
                    f"attempts ({exc!r}); check that NATS is up, then publish the file again "
                    "(messages already stored are not stored twice)"
                ) from exc
            await asyncio.sleep(0.5 * 2 ** (attempt - 1))


async def publish_file(
    path: Path, config: JetStreamConfig, window: int = WINDOW, timeout_s: float = 30.0
) -> PublishReport:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is not a file; give the path of a .jsonl, .csv or .parquet"
        )
    started = time.perf_counter()
    file_id = _file_id(path)
    nc = await connect(config)
    try:
        await ensure_streams(nc, config, consumer=False)
        js = nc.jetstream(timeout=config.request_timeout_s)
        published = duplicates = not_sent = 0
        first = last = None
        pending: list[tuple[str, bytes]] = []

        async def flush() -> None:
            nonlocal published, duplicates, first, last
            acks = await _send_window(js, config.subject, pending, timeout_s)
            published += len(acks)
            duplicates += sum(1 for a in acks if a.duplicate)
            seqs = [a.seq for a in acks]
            first = min(seqs) if first is None else min(first, *seqs)
            last = max(seqs) if last is None else max(last, *seqs)
            pending.clear()

        try:
            for item in iter_messages(path):
                if isinstance(item, int):
                    not_sent += item
                    continue
                row, body = item
                pending.append((f"{file_id}:{row}", body))
                if len(pending) >= window:
                    await flush()
            if pending:
                await flush()
        except FileRejected as exc:
            raise ValueError(f"{path}: {exc.reason}") from None
    finally:
        await nc.close()
    return PublishReport(
        path, published, duplicates, not_sent, first, last, time.perf_counter() - started
    )
