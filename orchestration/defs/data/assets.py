"""Data layer assets: the landing zone ingested into the versioned corpus and quarantine.

`corpus` and `quarantine` are Delta tables under `$MLOPS_HOME/lake` written by one
step (`ingestion.pipeline.ingest`), so they are one multi-asset. Re-running is safe:
files are remembered by content fingerprint and records are keyed by content hash, so a
retried or repeated run adds nothing twice. `corpus_split` reports the deterministic
train / held-out split of the current corpus version.

Both checks on `corpus` are blocking: a failed check stops everything downstream in the
same run, so no model is trained on a batch that did not validate.
"""

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from ingestion.config import IngestConfig
from ingestion.lake import corpus_version, read_corpus
from ingestion.pipeline import IngestReport, ingest
from ingestion.split import HELDOUT_BASIS_POINTS, split_of
from orchestration.resources import MlopsHome

from .checks import heldout_leakage, records_balance

OWNERS = ["team:data-platform"]


class IngestRunConfig(dg.Config):
    files: list[str] = []
    """Landing-relative paths to ingest; empty means every file not ingested yet."""
    max_text_chars: int = 100_000
    """Records whose text is longer are quarantined (`text_too_long`)."""


def _file_table(report: IngestReport) -> dg.TableMetadataValue:
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name, type_)
            for name, type_ in [
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
    records = [
        dg.TableRecord(
            {
                "file": f.source_file,
                "status": f.status,
                "read": f.records_read,
                "accepted": f.accepted,
                "duplicates": f.duplicates,
                "quarantined": f.quarantined,
                "reason": f.reason or "",
            }
        )
        for f in report.files
    ]
    return dg.MetadataValue.table(records, schema=schema)


@dg.multi_asset(
    name="ingest_landing_files",
    specs=[
        dg.AssetSpec(
            "corpus",
            group_name="data",
            owners=OWNERS,
            kinds={"deltalake"},
            description=(
                "Accepted text records, one row per distinct normalised text (record_id = "
                "sha256). The Delta table version is the data version every model records."
            ),
        ),
        dg.AssetSpec(
            "quarantine",
            group_name="data",
            owners=OWNERS,
            kinds={"deltalake"},
            description=(
                "Records and whole files that were refused, each with a reason code, a "
                "sentence saying what to fix, and a bounded raw excerpt. Nothing is dropped."
            ),
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "records_balance",
            asset="corpus",
            blocking=True,
            description=(
                "For every file: records read = accepted + duplicates + quarantined, and the "
                "accepted / quarantined counts match the rows really stored in the tables."
            ),
        ),
        dg.AssetCheckSpec(
            "great_expectations_suite",
            asset="corpus",
            blocking=True,
            description="Every accepted batch passed the Great Expectations suite before commit.",
        ),
    ],
)
def ingest_landing_files(
    context: dg.AssetExecutionContext, config: IngestRunConfig, mlops: MlopsHome
):
    """Ingest new landing files into the corpus; quarantine what fails the rules."""
    landing = mlops.landing()
    landing.mkdir(parents=True, exist_ok=True)
    ingest_config = IngestConfig(
        landing_dir=landing, lake_dir=mlops.lake(), max_text_chars=config.max_text_chars
    )
    paths = [landing / f for f in config.files] or None
    report = ingest(ingest_config, paths=paths, run_id=context.run_id)
    context.log.info(
        f"{len(report.files)} file(s): {report.accepted} accepted, {report.duplicates} "
        f"duplicates, {report.quarantined} quarantined; corpus version {report.corpus_version}"
    )
    version = report.corpus_version
    yield dg.MaterializeResult(
        asset_key="corpus",
        data_version=dg.DataVersion(str(version)) if version is not None else None,
        metadata={
            "data_version": version if version is not None else -1,
            "path": dg.MetadataValue.path(str(mlops.lake() / "corpus")),
            "files": _file_table(report),
            "records_read": report.records_read,
            "accepted": report.accepted,
            "duplicates": report.duplicates,
            "quarantined": report.quarantined,
            "dagster/row_count": _row_count(mlops, version),
        },
    )
    yield dg.MaterializeResult(
        asset_key="quarantine",
        metadata={
            "delta_version": report.quarantine_version
            if report.quarantine_version is not None
            else -1,
            "path": dg.MetadataValue.path(str(mlops.lake() / "quarantine")),
            "quarantined_this_run": report.quarantined,
        },
    )
    yield records_balance(mlops.lake(), report)
    failed = report.validation.failed_expectations
    yield dg.AssetCheckResult(
        check_name="great_expectations_suite",
        asset_key="corpus",
        passed=report.validation.success,
        metadata={
            "batches": report.validation.batches,
            "rows_validated": report.validation.rows_validated,
            "failed_expectations": ", ".join(failed) or "none",
        },
    )


def _row_count(mlops: MlopsHome, version: int | None) -> int:
    if version is None:
        return 0
    return read_corpus(mlops.lake(), version=version, columns=["record_id"]).num_rows


@dg.asset(
    deps=["corpus"],
    group_name="data",
    owners=OWNERS,
    kinds={"deltalake"},
    check_specs=[
        dg.AssetCheckSpec(
            "no_heldout_leakage",
            asset="corpus_split",
            description=(
                "No held-out text reappears in the train split after case and whitespace "
                "folding (near-duplicates that the exact record id cannot see)."
            ),
        )
    ],
)
def corpus_split(context: dg.AssetExecutionContext, mlops: MlopsHome):
    """The deterministic train / held-out split of the current corpus version.

    The split is a pure function of each record id (`ingestion.split.split_of`), shared
    with the trainer, so this asset stores nothing: it reports the split sizes at the data
    version, which training and evaluation then read. Safe to re-run at any time.
    """
    version = corpus_version(mlops.lake())
    if version is None:
        raise dg.Failure(
            description="The corpus table does not exist yet: land files in "
            f"{mlops.landing()} and run the `ingest` job first."
        )
    table = read_corpus(mlops.lake(), version=version, columns=["record_id", "text"])
    heldout_mask = pa.array(
        [split_of(rid) == "heldout" for rid in table.column("record_id").to_pylist()], pa.bool_()
    )
    heldout = table.filter(heldout_mask)
    train = table.filter(pc.invert(heldout_mask))
    yield dg.MaterializeResult(
        data_version=dg.DataVersion(str(version)),
        metadata={
            "data_version": version,
            "train_records": train.num_rows,
            "heldout_records": heldout.num_rows,
            "heldout_share_target": HELDOUT_BASIS_POINTS / 10_000,
        },
    )
    yield heldout_leakage(train, heldout)
