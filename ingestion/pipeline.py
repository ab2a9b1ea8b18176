"""Ingest landed files into the corpus: discover, read, screen, dedupe, validate, commit, record.

Per file, in this order, so that a crash at any point loses nothing and doubles nothing:

1. quarantine rows left by an interrupted attempt on the same content are deleted;
2. records stream through reader -> screen -> dedupe -> expectation suite into ONE corpus
   commit (a file whose reader fails midway commits no record, and is rejected as a whole);
3. the file's quarantine rows, spooled meanwhile, are appended in one commit;
4. the ledger row is appended last: only then is the file "done".

A crash before 4 means the file is processed again: its records are now duplicates of the
committed ones (the corpus is deduplicated by record id) and step 1 removes its earlier
quarantine rows, so the lake ends exactly as after one clean run (only that file's counts
differ: its records now count as duplicates). A file is known by the sha256 of its bytes, so
the same content under a new name is ``already_ingested``. One ingest runs at a time.
Files are opened with ``O_NOFOLLOW`` so a file swapped for a symlink after the checks is
still refused. Hidden files and directories (name starting with ".") are ignored, so a
writer can land a file atomically by writing ``.name`` and renaming it; so is ``evals/``,
the eval suites' landing folder (``ingestion/evals.py``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pyarrow as pa

from ingestion import lake
from ingestion.config import IngestConfig
from ingestion.contract import SUPPORTED_EXTENSIONS, FileRejected, ReasonCode
from ingestion.evals import EVALS_DIR
from ingestion.readers import read_file
from ingestion.report import (
    FileReport,
    IngestReport,
    LandedFile,
    ValidationSummary,
)
from ingestion.run import FileRun, RunState
from ingestion.writer_lock import corpus_writer

__all__ = [
    "FileReport",
    "IngestConfig",
    "IngestReport",
    "LandedFile",
    "ValidationSummary",
    "discover",
    "ingest",
]

_HASH_BLOCK = 1 << 20


def _hash_fd(fd: int) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while block := os.read(fd, _HASH_BLOCK):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def link_fingerprint(path: Path) -> str:
    """Identity of a symlink: its target, never its content (the target may lie anywhere)."""
    return "symlink:" + hashlib.sha256(os.fsencode(os.readlink(path))).hexdigest()


def discover(config: IngestConfig) -> list[LandedFile]:
    """Files under the landing dir not yet in the ledger, sorted by relative path.

    Symlinks (to files or directories) are listed, never followed, so ``ingest`` refuses them
    with a reason. A file whose path, size and mtime match its ledger row is not hashed again.
    """
    landing = config.landing_dir
    if not landing.is_dir():
        return []
    ledger = lake.read_ledger(config.ledger_path)
    known = set(ledger.column("fingerprint").to_pylist())
    by_stat = {
        (row["source_file"], row["size"], row["mtime_ns"]): row["fingerprint"]
        for row in ledger.select(["source_file", "size", "mtime_ns", "fingerprint"]).to_pylist()
    }
    found = []
    for root, dirs, files in os.walk(landing, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if Path(root) == landing and EVALS_DIR in dirs:
            dirs.remove(EVALS_DIR)  # eval suites have their own ingestion (ingestion/evals.py)
        for name in (*dirs, *files):
            path = Path(root) / name
            if name.startswith("."):
                continue
            relative = path.relative_to(landing).as_posix()
            try:
                info = path.lstat()
                if stat.S_ISLNK(info.st_mode):
                    fingerprint = link_fingerprint(path)
                elif stat.S_ISREG(info.st_mode):
                    fingerprint = by_stat.get((relative, info.st_size, info.st_mtime_ns))
                    if fingerprint is None:
                        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                        try:
                            fingerprint, _ = _hash_fd(fd)
                        finally:
                            os.close(fd)
                else:
                    continue  # directories are walked; fifos, sockets, devices are not data
            except OSError:
                continue  # vanished or unreadable now; ingest reports it if asked explicitly
            if fingerprint not in known:
                found.append(
                    LandedFile(path, relative, fingerprint, info.st_size, info.st_mtime_ns)
                )
    return sorted(found, key=lambda f: f.relative)


def ingest(
    config: IngestConfig, paths: list[Path] | None = None, run_id: str | None = None
) -> IngestReport:
    """Ingest ``paths`` (absolute, or relative to the landing dir), or everything ``discover``
    finds. Never raises for a bad file: each file gets a ``FileReport``."""
    run_id = run_id or uuid.uuid4().hex
    with corpus_writer(config.lake_dir):  # the stream consumer appends to the corpus too
        return _ingest_locked(config, paths, run_id)


def _ingest_locked(config: IngestConfig, paths: list[Path] | None, run_id: str) -> IngestReport:
    for stale in config.lake_dir.glob(".spill-*"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    landed = discover(config) if paths is None else []
    targets = [f.path for f in landed] if paths is None else [Path(p) for p in paths]
    state = RunState(config, run_id, datetime.now(UTC))
    # a file unchanged (same size and mtime) since discover hashed it is not hashed again
    hashed = {f.relative: f for f in landed}
    reports = [_ingest_one(state, path, hashed) for path in targets]
    return IngestReport(
        files=reports,
        corpus_version=lake.table_version(config.corpus_path),
        quarantine_version=lake.table_version(config.quarantine_path),
        validation=state.validation_summary(),
        run_id=run_id,
    )


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _ingest_one(state: RunState, given: Path, hashed: dict[str, LandedFile]) -> FileReport:
    """Check where the path leads, then ingest it as a regular file."""
    landing = Path(os.path.abspath(state.config.landing_dir))
    path = Path(os.path.abspath(given if given.is_absolute() else landing / given))
    if not _inside(path, landing):
        return state.reject(
            str(path),
            None,
            ReasonCode.OUTSIDE_LANDING,
            f"{path} is outside the landing directory {landing}; copy the file into it",
        )
    relative = path.relative_to(landing).as_posix()
    if path.is_symlink():
        try:
            fingerprint = link_fingerprint(path)
        except OSError as exc:
            return state.reject(
                relative, None, ReasonCode.UNREADABLE_FILE, f"cannot read the link ({exc})"
            )
        if state.is_known(fingerprint):
            return state.already_ingested(relative, fingerprint)
        return state.reject(
            relative,
            fingerprint,
            ReasonCode.SYMLINK,
            "symlinks are not followed; copy the file itself into the landing directory",
            stat_key=(0, 0),
        )
    if not _inside(path.resolve(), landing.resolve()):
        return state.reject(
            relative,
            None,
            ReasonCode.OUTSIDE_LANDING,
            f"{relative} resolves to {path.resolve()}, outside the landing directory; "
            "copy the file itself into it",
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        code = ReasonCode.SYMLINK if path.is_symlink() else ReasonCode.UNREADABLE_FILE
        return state.reject(
            relative, None, code, f"cannot open the file ({exc}); check it exists and is readable"
        )
    with os.fdopen(fd, "rb") as f:
        try:
            return _ingest_open_file(state, f, relative, hashed.get(relative))
        except OSError as exc:
            return state.reject(
                relative,
                None,
                ReasonCode.UNREADABLE_FILE,
                f"reading the file failed ({exc}); it is retried on the next run",
            )


def _ingest_open_file(
    state: RunState, f: BinaryIO, relative: str, landed: LandedFile | None
) -> FileReport:
    info = os.fstat(f.fileno())
    if not stat.S_ISREG(info.st_mode):
        return state.reject(
            relative, None, ReasonCode.UNREADABLE_FILE, "not a regular file; land data files only"
        )
    if landed is not None and (landed.size, landed.mtime_ns) == (info.st_size, info.st_mtime_ns):
        fingerprint, size = landed.fingerprint, info.st_size
    else:
        fingerprint, size = _hash_fd(f.fileno())
    if state.is_known(fingerprint):
        return state.already_ingested(relative, fingerprint)
    stat_key = (info.st_size, info.st_mtime_ns)
    suffix = PurePosixPath(relative).suffix.lower()
    if size == 0:
        return state.reject(
            relative,
            fingerprint,
            ReasonCode.EMPTY_FILE,
            "the file is empty; land it again once it is fully written",
            stat_key=stat_key,
        )
    if suffix not in SUPPORTED_EXTENSIONS:
        return state.reject(
            relative,
            fingerprint,
            ReasonCode.UNSUPPORTED_EXTENSION,
            f"extension {suffix or '(none)'!r} is not one of "
            f"{', '.join(SUPPORTED_EXTENSIONS)}; convert the file",
            stat_key=stat_key,
        )
    f.seek(0)
    config = state.config
    batches = read_file(f, suffix, config.batch_rows, config.max_line_bytes, config.excerpt_chars)
    try:
        return FileRun(state, relative, fingerprint, stat_key).process(batches)
    except FileRejected as exc:
        return state.reject(
            relative, fingerprint, exc.code, exc.reason, stat_key=stat_key, excerpt=exc.excerpt
        )
    except pa.ArrowException as exc:
        return state.reject(
            relative,
            fingerprint,
            ReasonCode.UNPARSEABLE_FILE,
            f"the file cannot be read ({str(exc)[:300]}); fix it and land it again",
            stat_key=stat_key,
        )
