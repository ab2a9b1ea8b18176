"""Contract of a micro-batch (no broker): messages get exactly the landing zone's record rules
(same accepted record ids and quarantine reason codes as the same lines in a JSONL file),
rows are keyed by stream sequence, duplicates are dropped against the corpus and within the
batch, a redelivered message already quarantined is not quarantined again, and the batch's
vectorised parse gives the same result as parsing message by message."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


from ingestion import lake  # noqa: E402
from ingestion.parse import parse_json_line  # noqa: E402
from ingestion.stream.batch import BatchRules, build_batch  # noqa: E402
from ingestion.stream.source import Delivery  # noqa: E402
from ingestion.validation import CorpusSuite  # noqa: E402

LINES = [
    json.dumps({"text": "alpha", "id": 1, "source": "s"}),
    json.dumps({"text": "beta\r\nline"}),
    json.dumps({"text": "alpha"}),  # duplicate within the batch
    "not json",
    json.dumps({"text": "   "}),
    json.dumps({"text": 42}),
    json.dumps({"id": "no text"}),
    json.dumps({"text": "x" * 50}),  # too long for the limit below
    json.dumps(["an", "array"]),
    json.dumps({"text": "gamma", "created_at": None}),
]
RULES = BatchRules("nats://TEST", max_text_chars=40)


@pytest.fixture(scope="module")
def suite() -> CorpusSuite:
    return CorpusSuite(RULES.max_text_chars)


def _deliveries(lines: list[str], first: int = 101) -> list[Delivery]:
    return [Delivery(line.encode(), first + i, 1) for i, line in enumerate(lines)]


def _build(deliveries, suite, known=None, already=frozenset(), decoder=parse_json_line):
    return build_batch(
        deliveries, RULES, known or lake.IdSet(), suite, "run", datetime.now(UTC), set(already),
        decoder,
    )  # fmt: skip


def test_same_rules_as_the_landing_zone(tmp_path: Path, suite) -> None:
    path = tmp_path / "same.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    landing = tmp_path / "oracle" / "landing"
    landing.mkdir(parents=True)
    (landing / path.name).write_bytes(path.read_bytes())
    from ingestion.pipeline import IngestConfig, ingest

    config = IngestConfig(landing, tmp_path / "oracle" / "lake", max_text_chars=40)
    ingest(config)
    expected_ids = set(lake.read_corpus(config.lake_dir).column("record_id").to_pylist())
    expected_codes = sorted(
        lake.read_table(config.quarantine_path).column("reason_code").to_pylist()
    )

    tables = _build(_deliveries(LINES), suite)
    assert set(tables.corpus.column("record_id").to_pylist()) == expected_ids
    assert sorted(tables.quarantine.column("reason_code").to_pylist()) == expected_codes
    assert tables.read == len(LINES) and tables.duplicates == 1
    assert tables.accepted + tables.duplicates + tables.quarantined == tables.read
    assert tables.corpus.column("source_row").to_pylist() == [101, 102, 110]
    assert set(tables.corpus.column("source_file").to_pylist()) == {"nats://TEST"}
    assert tables.quarantine.column("source_row").to_pylist() == [104, 105, 106, 107, 108, 109]


def test_vectorised_parse_equals_message_by_message(suite) -> None:
    good = [json.dumps({"text": f"t{i}", "source": "s", "id": i}) for i in range(50)]
    for lines in (good, LINES):
        fast = _build(_deliveries(lines), suite)
        slow = _build(_deliveries(lines), suite, decoder=lambda b: parse_json_line(b))
        assert fast.corpus.drop(["ingested_at"]).equals(slow.corpus.drop(["ingested_at"]))
        columns = ["source_row", "reason_code", "reason", "raw_excerpt"]
        assert fast.quarantine.select(columns).equals(slow.quarantine.select(columns))


def test_redelivery_stores_nothing_twice(suite) -> None:
    first = _build(_deliveries(LINES), suite)
    known = lake.IdSet()
    known.add(first.digests)
    quarantined = set(first.quarantine.column("source_row").to_pylist())
    again = _build(_deliveries(LINES), suite, known=known, already=quarantined)
    assert again.corpus.num_rows == 0 and again.quarantine.num_rows == 0
    assert again.duplicates == again.read


def test_a_message_whose_decoding_raises_is_set_aside(suite) -> None:
    def decoder(data: bytes):
        if b"beta" in data:
            raise RuntimeError("boom")
        return parse_json_line(data)

    tables = _build(_deliveries(LINES), suite, decoder=decoder)
    assert [(d.sequence, error) for d, error in tables.failed] == [(102, "RuntimeError: boom")]
    assert tables.corpus.column("source_row").to_pylist() == [101, 110]
