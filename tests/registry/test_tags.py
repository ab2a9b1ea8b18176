"""Contract: the registry's version-tag schema reads back what it writes.

``Lineage.from_tags`` inverts ``Lineage.tags`` (optional fields omitted when empty, a data
version that is missing or not a number reads as unknown); ``RollbackTags.from_tags``
inverts ``RollbackTags.tags`` and reads a version with no rollback as None.
"""

from __future__ import annotations

from registry import Lineage, RollbackTags


def _lineage(**overrides) -> Lineage:
    values = dict(
        data_path="/lake/corpus",
        data_version=7,
        training_run_id="run-1",
        config_hash="abc",
        code_version="deadbeef+dirty",
        model_sha256="0" * 64,
        init="warm_start",
        parent_version="3",
        seed="17",
    )
    return Lineage(**{**values, **overrides})


def test_lineage_round_trips_through_its_tags() -> None:
    for lineage in (_lineage(), _lineage(init="", parent_version="", seed="", data_version=None)):
        tags = lineage.tags()
        assert all(key.startswith("lineage.") for key in tags)
        assert Lineage.from_tags({**tags, "gate.passed": "true"}) == lineage


def test_lineage_of_an_untagged_version_reads_as_unknown() -> None:
    lineage = Lineage.from_tags({"lineage.data_version": "n/a"})
    assert lineage.data_version is None
    assert lineage.data_path == lineage.model_sha256 == ""


def test_rollback_tags_round_trip_and_absence() -> None:
    rolled_back = RollbackTags(reason="p95 doubled", by="sensor", at="2026-12-05T08:00:00+00:00")
    assert "rollback.to" not in rolled_back.tags()
    assert RollbackTags.from_tags(rolled_back.tags()) == rolled_back
    moved = RollbackTags(reason="bad answers", by="operator", at="t", to="4")
    assert moved.tags()["rollback.to"] == "4"
    assert RollbackTags.from_tags(moved.tags()) == moved
    assert RollbackTags.from_tags({"lineage.data_version": "7"}) is None
