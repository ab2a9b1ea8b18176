"""Checks of the data layer, computed from what is really stored, not from the report alone."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from ingestion.pipeline import IngestReport

_SPACE = re.compile(r"\s+")


def _rows_by_fingerprint(table_path: Path, fingerprints: list[str]) -> dict[str, int]:
    if not fingerprints or not (table_path / "_delta_log").exists():
        return {}
    table = DeltaTable(str(table_path)).to_pyarrow_table(
        columns=["source_fingerprint"],
        filters=[("source_fingerprint", "in", fingerprints)],
    )
    counts = table.group_by("source_fingerprint").aggregate([("source_fingerprint", "count")])
    return dict(
        zip(
            counts.column("source_fingerprint").to_pylist(),
            counts.column("source_fingerprint_count").to_pylist(),
            strict=True,
        )
    )


def records_balance(lake: Path, report: IngestReport) -> dg.AssetCheckResult:
    """read = accepted + duplicates + quarantined per file, and the tables agree."""
    ingested = [f for f in report.files if f.status == "ingested" and f.fingerprint]
    fingerprints = [f.fingerprint for f in ingested]
    stored = _rows_by_fingerprint(lake / "corpus", fingerprints)
    quarantined = _rows_by_fingerprint(lake / "quarantine", fingerprints)
    problems = []
    for f in report.files:
        if f.records_read != f.accepted + f.duplicates + f.quarantined:
            problems.append(
                f"{f.source_file}: read {f.records_read} != {f.accepted} accepted + "
                f"{f.duplicates} duplicates + {f.quarantined} quarantined"
            )
    for f in ingested:
        # A re-run after a crash that followed the corpus commit finds the file's records
        # already stored and counts them as duplicates, so stored rows may exceed accepted
        # by at most the duplicates; fewer than accepted means rows were lost.
        rows = stored.get(f.fingerprint, 0)
        if not f.accepted <= rows <= f.accepted + f.duplicates:
            problems.append(
                f"{f.source_file}: {f.accepted} accepted ({f.duplicates} duplicates) but "
                f"{rows} rows in corpus"
            )
        if quarantined.get(f.fingerprint, 0) != f.quarantined:
            problems.append(
                f"{f.source_file}: {f.quarantined} quarantined but "
                f"{quarantined.get(f.fingerprint, 0)} rows in quarantine"
            )
    return dg.AssetCheckResult(
        check_name="records_balance",
        asset_key="corpus",
        passed=not problems,
        metadata={"files_checked": len(report.files), "problems": "\n".join(problems) or "none"},
    )


def _fold(texts: pa.ChunkedArray) -> set[str]:
    return {_SPACE.sub(" ", t).strip() for t in pc.utf8_lower(texts).to_pylist()}


def heldout_leakage(train: pa.Table, heldout: pa.Table) -> dg.AssetCheckResult:
    leaked = _fold(heldout.column("text")) & _fold(train.column("text"))
    return dg.AssetCheckResult(
        check_name="no_heldout_leakage",
        asset_key="corpus_split",
        passed=not leaked,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "leaked_texts": len(leaked),
            "examples": "\n".join(sorted(leaked)[:5]) or "none",
        },
    )
