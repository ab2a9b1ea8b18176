"""Contract: while the lake cannot be written, the consumer acknowledges nothing, pulls no
further batch (the backlog stays in the broker), keeps its held batch alive at the broker (no
redelivery) and retries with backoff, visible in its Prometheus metrics; once the lake is
writable again everything is committed exactly once. The failure is real: the corpus table's
``_delta_log`` directory is made immutable (``chattr +i``), so no commit can be written."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from stream_broker import (  # noqa: E402
    consumer_info,
    delete_streams,
    drained,
    publish,
    start_consumer,
    stream_rows,
    unique_config,
)

from ingestion import lake  # noqa: E402
from ingestion.stream import ledger  # noqa: E402


def _metric(port: int, name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return -1.0
    for line in text.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lake_story(lake_dir: Path, log: Path) -> str:
    """What the lake holds, version by version, for a failure message: which step lost rows
    (never committed, quarantined, or gone from a later version) shows at a glance."""
    lines = []
    version = lake.corpus_version(lake_dir)
    for v in range(0 if version is None else version + 1):
        lines.append(f"corpus v{v}: {lake.corpus_rows(lake_dir, v)} rows")
    try:
        codes = lake.read_table(lake_dir / "quarantine").column("reason_code").to_pylist()
        lines.append(f"quarantine: {dict(Counter(codes))}")
    except FileNotFoundError:
        lines.append("quarantine: none")
    for row in ledger.read_commits(lake_dir)[0].to_pylist():
        lines.append(
            f"ledger: {row['first_sequence']}..{row['last_sequence']} "
            f"accepted={row['accepted']} quarantined={row['quarantined']} "
            f"corpus_version={row['corpus_version']}"
        )
    return "\n".join(lines) + "\n" + log.read_text()[-3000:]


def _records(path: Path, start: int, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(start, start + n))
    )
    return path


@pytest.mark.slow
def test_unwritable_lake_holds_back_acks_and_loses_nothing(tmp_path: Path, wait_until) -> None:
    config = unique_config(ack_wait_s=20.0)
    home, log, port = tmp_path / "home", tmp_path / "consumer.log", _free_port()
    delta_log = home / "lake" / "corpus" / "_delta_log"
    consumer = None

    try:
        assert publish(config, _records(tmp_path / "a.jsonl", 0, 500)).returncode == 0
        consumer = start_consumer(
            config, home, log, "--batch-messages", "500", "--metrics-port", str(port)
        )
        wait_until(
            lambda: drained(config),
            "the first file committed",
            300,
            lambda: log.read_text()[-2000:],
        )
        version = lake.corpus_version(home / "lake")
        # the first file's rows are checked here, where a loss would happen, not only at the end
        assert lake.corpus_rows(home / "lake") == 500, _lake_story(home / "lake", log)

        subprocess.run(["chattr", "+i", str(delta_log)], check=True)
        assert publish(config, _records(tmp_path / "b.jsonl", 500, 2000)).returncode == 0
        wait_until(
            lambda: _metric(port, "mlops_stream_commit_failures_total") >= 3,
            "three failed commit attempts",
            120,
            lambda: log.read_text()[-2000:],
        )
        held = consumer_info(config)
        failures = _metric(port, "mlops_stream_commit_failures_total")
        wait_until(
            lambda: _metric(port, "mlops_stream_commit_failures_total") >= failures + 2,
            "two more failed attempts",
            120,
        )
        later = consumer_info(config)
        assert _metric(port, "mlops_stream_lake_unavailable") == 1
        assert 0 < held.num_ack_pending <= 500, "the batch in hand must stay unacknowledged"
        assert held.num_ack_pending + held.num_pending == 2000
        assert (later.num_ack_pending, later.num_pending) == (
            held.num_ack_pending,
            held.num_pending,
        ), "no further batch may be pulled, nothing acked, while the lake is down"
        assert later.num_redelivered == 0, "held messages must be kept alive, not redelivered"
        assert lake.corpus_version(home / "lake") == version
    finally:
        subprocess.run(["chattr", "-i", str(delta_log)], check=False)
    try:
        wait_until(
            lambda: drained(config), "the backlog committed", 300, lambda: log.read_text()[-2000:]
        )
        assert _metric(port, "mlops_stream_lake_unavailable") == 0
        assert consumer.poll() is None
    finally:
        if consumer is not None:
            consumer.kill()
        delete_streams(config)
    corpus, quarantine = stream_rows(home / "lake", f"nats://{config.stream}")
    texts = corpus.column("text").to_pylist()
    missing = {f"text {i}" for i in range(2500)} - set(texts)
    assert len(texts) == 2500 and not missing, (
        f"{len(texts)} rows at corpus version {lake.corpus_version(home / 'lake')}, "
        f"{len(missing)} missing, e.g. {sorted(missing)[:3]}\n{_lake_story(home / 'lake', log)}"
    )
    assert quarantine.num_rows == 0
