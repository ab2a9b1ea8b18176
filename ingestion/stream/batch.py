"""One micro-batch of deliveries through the file path's record contract.

Each message is one record, a JSON object with ``text`` and the optional fields, exactly as a
JSONL line is; ``parse_json_line`` and ``screen`` (the file path's own code) decide what is
accepted and what is quarantined with which reason, duplicates are dropped by record id
(within the batch and against the corpus), and accepted rows pass the same Great Expectations
suite. In the lake a streamed row names its source as ``source_file = source_fingerprint =
<source name>`` (e.g. ``nats://MLOPS_RECORDS``) and ``source_row = <stream sequence>``, the
position that stays the same when the message is delivered again.

A message whose *decoding raises* (not a refusal: an unexpected error) is set aside as
failed; the committer retries it later or, on its last allowed delivery, dead-letters it
(``failure_reason``). One delivered beyond the limit, because the consumer never finished
with it, is dead-lettered without decoding (``unfinished_reason``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingestion import lake
from ingestion.contract import OPTIONAL_FIELDS, RECORD_REASONS, ReasonCode
from ingestion.parse import (
    RAW_SCHEMA,
    RawBatch,
    Refusals,
    excerpt,
    parse_json_line,
    parse_jsonl_chunk,
    screen,
)
from ingestion.quarantine import quarantine_table
from ingestion.run import first_occurrences
from ingestion.stream.source import Delivery
from ingestion.validation import CorpusSuite

_TS = lake.CORPUS_SCHEMA.field("ingested_at").type

#: Bytes -> ``parse_json_line``'s answer. Replaceable so another wire format can be decoded.
Decoder = Callable[[bytes], tuple | None]


@dataclass
class BatchTables:
    """What one micro-batch writes, and the deliveries that could not be processed."""

    corpus: pa.Table  # CORPUS_SCHEMA
    quarantine: pa.Table  # QUARANTINE_SCHEMA
    digests: np.ndarray  # record ids of ``corpus``, raw
    read: int = 0  # records decoded (failed messages excluded)
    accepted: int = 0  # rows in ``corpus``
    duplicates: int = 0  # already stored: in the corpus, or quarantined by an earlier delivery
    quarantined: int = 0  # rows in ``quarantine``
    failed: list[tuple[Delivery, str]] = field(default_factory=list)  # (delivery, error)


@dataclass(frozen=True)
class BatchRules:
    source_name: str
    max_text_chars: int = 100_000
    excerpt_chars: int = 512


def _decode_as_jsonl(deliveries: list[Delivery], rules: BatchRules) -> RawBatch | None:
    """The batch as one JSONL chunk through the file path's chunk parser (its vectorised fast
    path), when that cannot differ from parsing message by message: no body holds a newline
    and none is blank. Rows are then renumbered from chunk lines to stream sequences."""
    bodies = [d.data for d in deliveries]
    if any(b"\n" in body or not body.strip() for body in bodies):
        return None
    try:
        raw = parse_jsonl_chunk(b"\n".join(bodies) + b"\n", 0, rules.excerpt_chars)
    except Exception:
        return None  # the message-by-message path isolates whichever message is at fault
    sequences = pa.array([d.sequence for d in deliveries], pa.int64())
    rows = pc.take(sequences, raw.table.column("source_row"))
    table = raw.table.set_column(RAW_SCHEMA.get_field_index("source_row"), "source_row", rows)
    refused = raw.refused
    refused.rows = [deliveries[i].sequence for i in refused.rows]
    return RawBatch(table, refused)


def _decode(
    deliveries: list[Delivery], rules: BatchRules, decoder: Decoder
) -> tuple[RawBatch, list[tuple[Delivery, str]]]:
    if decoder is parse_json_line and (raw := _decode_as_jsonl(deliveries, rules)) is not None:
        return raw, []
    refused = Refusals()
    columns: list[list] = [[] for _ in RAW_SCHEMA.names]
    failed: list[tuple[Delivery, str]] = []
    for d in deliveries:
        try:
            parsed = decoder(d.data)
        except Exception as exc:  # one bad message must not take the batch down with it
            failed.append((d, f"{type(exc).__name__}: {exc}"[:500]))
            continue
        if parsed is None:
            parsed = (ReasonCode.INVALID_JSON, "the message is empty")
        if isinstance(parsed[0], ReasonCode):
            code, detail = parsed
            reason = f"{RECORD_REASONS[code]} ({detail})"
            refused.add(d.sequence, code, reason, excerpt(d.data, rules.excerpt_chars))
            continue
        for column, value in zip(columns, (*parsed, d.sequence), strict=True):
            column.append(value)
    table = pa.Table.from_pydict(dict(zip(RAW_SCHEMA.names, columns, strict=True)), RAW_SCHEMA)
    return RawBatch(table, refused), failed


def build_batch(
    deliveries: list[Delivery],
    rules: BatchRules,
    known_ids: lake.IdSet,
    suite: CorpusSuite,
    run_id: str,
    now: datetime,
    already_quarantined: set[int],
    decoder: Decoder = parse_json_line,
) -> BatchTables:
    """Screen, de-duplicate and validate; quarantine rows of ``already_quarantined`` sequences
    (committed by an earlier delivery of the same messages) are not built again."""
    raw, failed = _decode(deliveries, rules, decoder)
    accepted, refused = screen(raw, rules.max_text_chars, rules.excerpt_chars)
    read = accepted.num_rows + len(refused)
    digests = lake.digests(accepted.column("record_id"))
    keep = first_occurrences(digests) & ~known_ids.contains(digests) if len(digests) else None
    if keep is not None:
        accepted, digests = accepted.filter(pa.array(keep)), digests[keep]
    duplicates = read - len(refused) - accepted.num_rows
    if accepted.num_rows:
        verdict = suite.validate(accepted)
        if not verdict.success:
            reason = (
                f"its micro-batch failed the corpus expectations "
                f"({'; '.join(verdict.failed_expectations)}) and was not committed; fix the "
                "data or the rule, then publish the record again"
            )
            rows = accepted.column("source_row").to_pylist()
            texts = accepted.column("text").to_pylist()
            for row, text in zip(rows, texts, strict=True):
                refused.add(
                    row, ReasonCode.EXPECTATION_FAILED, reason, excerpt(text, rules.excerpt_chars)
                )
            accepted, digests = accepted.slice(0, 0), digests[:0]
    n = accepted.num_rows
    corpus = pa.table(
        {
            "record_id": accepted.column("record_id"),
            "text": accepted.column("text"),
            **{name: accepted.column(name) for name in OPTIONAL_FIELDS},
            "source_file": pa.array([rules.source_name] * n, pa.string()),
            "source_fingerprint": pa.array([rules.source_name] * n, pa.string()),
            "source_row": accepted.column("source_row"),
            "ingested_at": pa.array([now] * n, _TS),
        },
        schema=lake.CORPUS_SCHEMA,
    )
    if already_quarantined:
        keep_rows = [i for i, row in enumerate(refused.rows) if row not in already_quarantined]
        # stored by an earlier delivery of the same messages: counted as duplicates
        duplicates += len(refused) - len(keep_rows)
        refused = Refusals(
            [refused.rows[i] for i in keep_rows],
            [refused.codes[i] for i in keep_rows],
            [refused.reasons[i] for i in keep_rows],
            [refused.excerpts[i] for i in keep_rows],
        )
    quarantine = quarantine_table(rules.source_name, rules.source_name, refused, run_id, now)
    return BatchTables(corpus, quarantine, digests, read, n, duplicates, len(refused), failed)


def failure_reason(delivery: Delivery, error: str) -> str:
    """Why a message whose processing raised on each delivery was given up on."""
    return (
        f"processing the message failed on each of its {delivery.attempt} deliveries "
        f"(last error: {error}); it is in the dead-letter stream: fix the consumer or "
        "the record and publish it again"
    )


def unfinished_reason(delivery: Delivery) -> str:
    """Why a message that never got through processing at all was given up on."""
    return (
        f"the consumer died or stalled while processing the message on each of its "
        f"{delivery.attempt - 1} deliveries (killed, out of memory or past the ack wait, "
        "with this message in its batch, the last time alone); it was not processed again "
        "and is in the dead-letter stream: find why the consumer dies on it, then publish "
        "it again"
    )


def dead_letter_rows(
    given_up: list[tuple[Delivery, str]], rules: BatchRules, run_id: str, now: datetime
) -> pa.Table:
    """Quarantine rows for messages given up on, each with its reason."""
    refused = Refusals()
    for delivery, reason in given_up:
        refused.add(
            delivery.sequence,
            ReasonCode.DEAD_LETTERED,
            reason,
            excerpt(delivery.data, rules.excerpt_chars),
        )
    return quarantine_table(rules.source_name, rules.source_name, refused, run_id, now)
