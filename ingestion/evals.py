"""Eval-suite ingestion: ``landing/evals/<suite>/`` files into one Delta table per suite.

A suite file is ``.jsonl``, ``.csv`` or ``.parquet`` with a string ``prompt`` and
``expected`` per row and an optional ``match`` (``exact`` by default, or ``prefix``,
``contains``, ``regex``; see ``evaluation.suites``). The contract is the corpus's:

* a row is quarantined with a reason when its line is not a JSON object
  (``invalid_json``), ``prompt`` or ``expected`` is missing, not a string or blank
  (``missing_prompt``, ``missing_expected``), ``match`` is not one of the four
  (``unknown_match``), or a ``regex`` row's pattern does not compile (``invalid_regex``);
* a whole file is refused with one quarantine row when it is empty, has another extension,
  cannot be parsed, or lies directly in ``landing/evals/`` instead of a suite folder;
* a row already in the suite (same prompt, expected and match: ``example_id`` is their
  sha256) is a duplicate, counted and not stored again;
* a processed file is remembered in the shared ledger (``ingested_files``) by the sha256 of
  its bytes, so ingesting again adds nothing.

Per file, in this order, so a crash loses and doubles nothing: quarantine rows of an earlier
attempt on the same content are deleted; accepted rows are appended to the suite table in
one commit; quarantine rows in one commit; the ledger row last. Suite files are small (a
few thousand rows), so a file is read whole. The suite table's Delta version is the suite
version an evaluation records.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ingestion import lake
from ingestion.contract import SUPPORTED_EXTENSIONS
from ingestion.parse import Refusals, excerpt
from ingestion.quarantine import quarantine_table

EVALS_DIR = "evals"  # under the landing dir (suite files) and the lake dir (suite tables)
MATCH_KINDS = ("exact", "prefix", "contains", "regex")
SUITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TS = pa.timestamp("us", tz="UTC")

SUITE_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), False),
        pa.field("prompt", pa.string(), False),
        pa.field("expected", pa.string(), False),
        pa.field("match", pa.string(), False),
        pa.field("source_file", pa.string(), False),
        pa.field("source_fingerprint", pa.string(), False),
        pa.field("source_row", pa.int64(), False),
        pa.field("ingested_at", _TS, False),
    ]
)


@dataclass(frozen=True)
class SuiteFileReport:
    suite: str
    source_file: str  # landing-relative, e.g. ``evals/demo/tasks.jsonl``
    status: str  # ingested | already_ingested | rejected
    records_read: int
    accepted: int
    duplicates: int
    quarantined: int
    reason: str | None = None


def example_id(prompt: str, expected: str, match: str) -> str:
    return hashlib.sha256(f"{prompt}\0{expected}\0{match}".encode()).hexdigest()


def check_row(row: object) -> tuple[str, str] | tuple[str, str, str]:
    """``(prompt, expected, match)`` of a valid row, or ``(reason_code, reason)``."""
    if not isinstance(row, dict):
        return "invalid_json", "line is not a JSON object; write one JSON object per line"
    prompt, expected = row.get("prompt"), row.get("expected")
    match = row.get("match") or "exact"
    if not isinstance(prompt, str) or not prompt.strip():
        return "missing_prompt", "'prompt' is missing, not a string or blank; add the prompt"
    if not isinstance(expected, str) or not expected.strip():
        return (
            "missing_expected",
            "'expected' is missing, not a string or blank; add the expected answer",
        )
    if match not in MATCH_KINDS:
        return "unknown_match", f"'match' is {match!r}; use one of {', '.join(MATCH_KINDS)}"
    if match == "regex":
        try:
            re.compile(expected)
        except re.error as exc:
            return "invalid_regex", f"'expected' is not a valid regular expression: {exc}"
    return prompt, expected, match


def read_rows(path: Path) -> list[tuple[int, object]]:
    """``(row number, row)`` of a suite file: 1-based line number in JSONL (blank lines
    skipped; a line that is not JSON gives ``None``), 1-based data row in CSV and Parquet.
    Raises ``ValueError`` for a file that cannot be parsed at all."""
    if path.suffix == ".jsonl":
        rows: list[tuple[int, object]] = []
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except (json.JSONDecodeError, UnicodeDecodeError):
                rows.append((number, None))
        return rows
    try:
        if path.suffix == ".csv":
            columns = pacsv.read_csv(path).column_names
            types = dict.fromkeys(columns, pa.string())
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
        else:
            table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"cannot parse {path.name}: {exc}") from exc
    return list(enumerate(table.to_pylist(), start=1))


@dataclass
class SuiteIngest:
    landing_dir: Path
    lake_dir: Path
    run_id: str

    def __post_init__(self) -> None:
        self.started_at = datetime.now(UTC)
        ledger = lake.read_ledger(self.lake_dir / "ingested_files")
        self.known = set(ledger.column("fingerprint").to_pylist())

    @property
    def quarantine_path(self) -> Path:
        return self.lake_dir / "quarantine"

    def table_path(self, suite: str) -> Path:
        return self.lake_dir / EVALS_DIR / suite

    def run(self) -> list[SuiteFileReport]:
        root = self.landing_dir / EVALS_DIR
        if not root.is_dir():
            return []
        reports = []
        for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
            relative = path.relative_to(self.landing_dir).as_posix()
            if any(part.startswith(".") for part in path.relative_to(root).parts):
                continue  # hidden: a writer landing a file atomically (write, then rename)
            reports.append(self._one(path, relative))
        return reports

    def _one(self, path: Path, relative: str) -> SuiteFileReport:
        parts = path.relative_to(self.landing_dir / EVALS_DIR).parts
        suite = parts[0] if len(parts) == 2 else ""
        if path.is_symlink():
            return self._reject(suite, relative, None, "symlink", "symlinks are not followed")
        data = path.read_bytes()
        fingerprint = hashlib.sha256(data).hexdigest()
        if fingerprint in self.known:
            return SuiteFileReport(suite, relative, "already_ingested", 0, 0, 0, 0)
        if len(parts) != 2 or not SUITE_NAME.match(suite):
            return self._reject(
                suite,
                relative,
                fingerprint,
                "misplaced_file",
                "eval files go in landing/evals/<suite>/ (suite: letters, digits, '_', '-', "
                "'.'); move the file into a suite folder",
                path,
            )
        if path.suffix not in SUPPORTED_EXTENSIONS:
            return self._reject(
                suite,
                relative,
                fingerprint,
                "unsupported_extension",
                f"extension {path.suffix!r} is not one of {', '.join(SUPPORTED_EXTENSIONS)}",
                path,
            )
        if not data.strip():
            return self._reject(
                suite, relative, fingerprint, "empty_file", "the file is empty", path
            )
        try:
            rows = read_rows(path)
        except ValueError as exc:
            return self._reject(suite, relative, fingerprint, "unparseable_file", str(exc), path)
        return self._rows(suite, relative, fingerprint, rows, path)

    def _rows(self, suite, relative, fingerprint, rows, path) -> SuiteFileReport:
        table_path = self.table_path(suite)
        existing = set()
        if lake.table_version(table_path) is not None:
            existing = set(
                lake.read_table(table_path, columns=["example_id"]).column(0).to_pylist()
            )
        accepted, refused, read, duplicates = [], Refusals(), 0, 0
        for number, row in rows:
            read += 1
            checked = check_row(row)
            if len(checked) == 2:
                refused.add(
                    number, checked[0], checked[1], excerpt(json.dumps(row, default=str), 512)
                )
                continue
            prompt, expected, match = checked
            key = example_id(prompt, expected, match)
            if key in existing:
                duplicates += 1
                continue
            existing.add(key)
            accepted.append(
                {
                    "example_id": key,
                    "prompt": prompt,
                    "expected": expected,
                    "match": match,
                    "source_file": relative,
                    "source_fingerprint": fingerprint,
                    "source_row": number,
                    "ingested_at": self.started_at,
                }
            )
        lake.delete_quarantine_of(self.quarantine_path, fingerprint, relative)
        if accepted:
            lake.append(table_path, pa.Table.from_pylist(accepted, SUITE_SCHEMA), SUITE_SCHEMA)
        if len(refused):
            table = quarantine_table(relative, fingerprint, refused, self.run_id, self.started_at)
            lake.append(self.quarantine_path, table, lake.QUARANTINE_SCHEMA)
        report = SuiteFileReport(
            suite, relative, "ingested", read, len(accepted), duplicates, len(refused)
        )
        self._ledger(report, fingerprint, path, None)
        return report

    def _reject(self, suite, relative, fingerprint, code, reason, path=None) -> SuiteFileReport:
        lake.delete_quarantine_of(self.quarantine_path, fingerprint, relative)
        refused = Refusals()
        refused.add(None, code, reason, "")
        table = quarantine_table(relative, fingerprint, refused, self.run_id, self.started_at)
        lake.append(self.quarantine_path, table, lake.QUARANTINE_SCHEMA)
        report = SuiteFileReport(suite, relative, "rejected", 0, 0, 0, 0, f"{code}: {reason}")
        if fingerprint is not None and path is not None:
            self._ledger(report, fingerprint, path, code)
        return report

    def _ledger(self, report: SuiteFileReport, fingerprint: str, path: Path, code) -> None:
        info = path.stat()
        row = {
            "fingerprint": fingerprint,
            "source_file": report.source_file,
            "status": report.status,
            "size": info.st_size,
            "mtime_ns": info.st_mtime_ns,
            "records_read": report.records_read,
            "accepted": report.accepted,
            "duplicates": report.duplicates,
            "quarantined": report.quarantined,
            "reason_code": code,
            "reason": report.reason,
            "corpus_version": lake.table_version(self.table_path(report.suite))
            if report.suite
            else None,
            "ingested_at": self.started_at,
            "run_id": self.run_id,
        }
        table = pa.Table.from_pylist([row], schema=lake.LEDGER_SCHEMA)
        lake.append(self.lake_dir / "ingested_files", table, lake.LEDGER_SCHEMA)
        self.known.add(fingerprint)


def ingest_suites(landing_dir: Path, lake_dir: Path, run_id: str) -> list[SuiteFileReport]:
    """Ingest every new file under ``landing_dir/evals/<suite>/``; never raises for a bad file."""
    return SuiteIngest(Path(landing_dir), Path(lake_dir), run_id).run()
