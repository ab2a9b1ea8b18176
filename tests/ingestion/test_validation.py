"""The corpus expectation suite (ingestion.validation, Great Expectations): a well-formed batch
passes, and each broken property fails the named expectation."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ingestion.records import record_id
from ingestion.validation import CorpusSuite


@pytest.fixture(scope="module")
def suite() -> CorpusSuite:
    return CorpusSuite(max_text_chars=10)


def _batch(texts, ids=None, rows=None) -> pa.Table:
    return pa.table(
        {
            "record_id": ids if ids is not None else [record_id(t) for t in texts],
            "text": texts,
            "source_row": rows if rows is not None else list(range(1, len(texts) + 1)),
        }
    )


def test_well_formed_batch_passes(suite):
    verdict = suite.validate(_batch(["a", "b\nc", "0123456789"]))
    assert verdict.success and verdict.failed_expectations == []


@pytest.mark.parametrize(
    ("batch", "failed"),
    [
        (_batch(["a", "a"]), "record_id is unique"),
        (_batch(["a"], ids=["A" * 64]), "record_id is a sha256 hex digest"),
        (_batch(["a\rb"]), "text has normalised line endings"),
        (_batch(["01234567890"]), "text has 1..10 characters"),
        (_batch(["a"], rows=[0]), "source_row is a 1-based position"),
    ],
)
def test_each_broken_property_is_named(suite, batch, failed):
    verdict = suite.validate(batch)
    assert not verdict.success
    assert verdict.failed_expectations == [failed]


def test_one_long_text_does_not_multiply_memory_by_the_batch_size():
    # a fixed-width string conversion would need rows x longest text x 4 bytes (here 8 GB)
    import resource

    suite = CorpusSuite(max_text_chars=100_000)
    texts = [f"t{i}" for i in range(20_000)] + ["x" * 100_000]
    verdict = suite.validate(_batch(texts))
    assert verdict.success
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 3 * 2**20  # KiB: under 3 GiB
