"""Crash safety of ingestion (ingestion.pipeline write order): a real process is SIGKILLed at a
chosen point (mid-stream, after the corpus commit, after the quarantine commit, before the
ledger commit); re-running ingest must leave the lake exactly as one clean run does, with no
record, quarantine row or ledger row twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from landing import LIMIT, build_landing  # noqa: E402

from ingestion import lake  # noqa: E402
from ingestion.pipeline import IngestConfig, ingest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# Runs ingest in a child process that SIGKILLs itself at the n-th event of a kind.
CHILD = r"""
import os, signal, sys
from pathlib import Path
from ingestion import lake, run
from ingestion.pipeline import IngestConfig, ingest

landing, lake_dir, when, what, nth, limit = sys.argv[1:7]
calls = 0

def count():
    global calls
    calls += 1
    return calls == int(nth)

if what == "stream":
    check = run.FileRun._check
    def _check(self, table):
        if count():
            os.kill(os.getpid(), signal.SIGKILL)
        return check(self, table)
    run.FileRun._check = _check
else:
    append = lake.append
    def patched(path, data, schema):
        hit = Path(path).name == what and count()
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        version = append(path, data, schema)
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)
        return version
    lake.append = patched
ingest(IngestConfig(Path(landing), Path(lake_dir), max_text_chars=int(limit), batch_rows=3))
print("finished without crashing")
"""


def _state(config: IngestConfig) -> dict[str, list]:
    corpus = lake.read_corpus(
        config.lake_dir, columns=["record_id", "text", "source_file", "source_row"]
    )
    quarantine = lake.read_table(
        config.quarantine_path, columns=["source_file", "source_row", "reason_code"]
    )
    ledger = lake.read_ledger(config.ledger_path).select(["fingerprint", "source_file", "status"])
    key = lambda row: tuple("" if v is None else str(v) for v in row.values())  # noqa: E731
    return {
        "corpus": sorted(corpus.to_pylist(), key=key),
        "quarantine": sorted(quarantine.to_pylist(), key=key),
        "ledger": sorted(ledger.to_pylist(), key=key),
    }


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, list]:
    root = tmp_path_factory.mktemp("clean")
    build_landing(root / "landing")
    config = IngestConfig(root / "landing", root / "lake", max_text_chars=LIMIT, batch_rows=3)
    ingest(config)
    return _state(config)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("when", "what", "nth"),
    [
        ("during", "stream", 2),  # mid corpus stream of good.jsonl: nothing of it committed yet
        ("after", "corpus", 1),  # good.csv's records committed, its quarantine and ledger not
        ("after", "quarantine", 3),  # good.csv's records and quarantine rows committed, ledger not
        ("before", "ingested_files", 4),  # good.jsonl done except its ledger row
    ],
)
def test_rerun_after_sigkill_matches_a_clean_run(tmp_path: Path, clean, when, what, nth):
    build_landing(tmp_path / "landing")
    config = IngestConfig(
        tmp_path / "landing", tmp_path / "lake", max_text_chars=LIMIT, batch_rows=3
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(config.landing_dir),
            str(config.lake_dir),
            when,
            what,
            str(nth),
            str(LIMIT),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    try:
        crashed = _state(config)
    except FileNotFoundError:  # a table not written yet
        crashed = None
    assert crashed != clean  # the crash really left the lake unfinished

    report = ingest(config)
    assert report.validation.success
    assert _state(config) == clean
    assert ingest(config).files == []  # and a further run has nothing left to do
