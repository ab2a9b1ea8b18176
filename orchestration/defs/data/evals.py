"""The `eval_suites` asset: task suites landed in `landing/evals/<suite>/`, one Delta table each.

The suites are data the operator provides (prompts, expected answers, a match rule per row),
ingested under the corpus's contract: bad rows are quarantined with a reason, a processed file
is remembered by its content fingerprint. Safe to re-run: a file already in the ledger adds
nothing, so the suite versions only move when new suite files land. Evaluation scores every
suite at the version this asset reports and records which it used.
"""

import dagster as dg

from evaluation.suites import suite_names
from ingestion.evals import EVALS_DIR, ingest_suites
from ingestion.lake import table_version
from orchestration.resources import MlopsHome

OWNERS = ["team:data-platform"]

_FILES = dg.TableSchema(
    columns=[
        dg.TableColumn(name, type_)
        for name, type_ in [
            ("suite", "string"),
            ("file", "string"),
            ("status", "string"),
            ("read", "int"),
            ("accepted", "int"),
            ("duplicates", "int"),
            ("quarantined", "int"),
            ("reason", "string"),
        ]
    ]
)


@dg.asset(group_name="data", owners=OWNERS, kinds={"deltalake"})
def eval_suites(context: dg.AssetExecutionContext, mlops: MlopsHome) -> dg.MaterializeResult:
    """Task suites for evaluation: one versioned Delta table per suite under `lake/evals`."""
    reports = ingest_suites(mlops.landing(), mlops.lake(), context.run_id)
    evals = mlops.lake() / EVALS_DIR
    versions = {name: table_version(evals / name) for name in suite_names(evals)}
    for report in reports:
        if report.status != "already_ingested":
            context.log.info(
                f"{report.source_file}: {report.status}, {report.accepted} accepted, "
                f"{report.duplicates} duplicates, {report.quarantined} quarantined"
                + (f" ({report.reason})" if report.reason else "")
            )
    records = [
        dg.TableRecord(
            {
                "suite": r.suite,
                "file": r.source_file,
                "status": r.status,
                "read": r.records_read,
                "accepted": r.accepted,
                "duplicates": r.duplicates,
                "quarantined": r.quarantined,
                "reason": r.reason or "",
            }
        )
        for r in reports
    ]
    return dg.MaterializeResult(
        metadata={
            "suites": ", ".join(f"{name}@{v}" for name, v in versions.items()) or "none",
            "suite_versions": dg.MetadataValue.json(versions),
            "files": dg.MetadataValue.table(records, schema=_FILES),
            "accepted": sum(r.accepted for r in reports),
            "quarantined": sum(r.quarantined for r in reports),
            "path": dg.MetadataValue.path(str(evals)),
        }
    )
