"""Test helpers for the real NATS JetStream broker at 127.0.0.1:4222 (shared: every test uses
its own stream names and deletes them), the consumer process, and the lake oracle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nats
import pyarrow as pa
from nats.js.errors import NotFoundError

from ingestion import lake
from ingestion.pipeline import IngestConfig, ingest
from ingestion.stream.jetstream import JetStreamConfig

ROOT = Path(__file__).resolve().parents[3]
NATS_BIN = "/usr/sbin/nats-server"
NATS_START = [
    "start-stop-daemon", "--start", "--oknodo", "--background", "--exec", NATS_BIN, "--",
    "-a", "127.0.0.1", "-p", "4222", "-js", "-sd", "/var/lib/nats-server",
    "-l", "/var/log/nats-server.log",
]  # fmt: skip


def unique_config(**overrides) -> JetStreamConfig:
    suffix = uuid.uuid4().hex[:10]
    values = {
        "stream": f"TEST_{suffix}",
        "subject": f"test.{suffix}.records",
        "durable": "corpus-writer",
        "dead_letter_stream": f"TEST_{suffix}_DLQ",
        "dead_letter_subject": f"test.{suffix}.dead",
        "ack_wait_s": 30.0,
    } | overrides
    return JetStreamConfig(**values)


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _with_js(config: JetStreamConfig, action):
    nc = await nats.connect(config.url, connect_timeout=5, max_reconnect_attempts=20)
    try:
        return await action(nc.jetstream(timeout=10))
    finally:
        await nc.close()


def delete_streams(config: JetStreamConfig) -> None:
    async def action(js):
        for name in (config.stream, config.dead_letter_stream):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)

    run(_with_js(config, action))


def consumer_info(config: JetStreamConfig):
    return run(_with_js(config, lambda js: js.consumer_info(config.stream, config.durable)))


def dead_letters(config: JetStreamConfig) -> list[tuple[bytes, dict]]:
    """Every message in the dead-letter stream: (bytes, headers)."""

    async def action(js):
        info = await js.stream_info(config.dead_letter_stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            msg = await js.get_msg(config.dead_letter_stream, seq)
            out.append((msg.data, dict(msg.headers or {})))
        return out

    return run(_with_js(config, action))


def nats_pid() -> int | None:
    out = subprocess.run(["pidof", "nats-server"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def stop_nats() -> None:
    """Stop the real broker (SIGTERM, as its init script does) and wait until it is gone."""
    subprocess.run(
        [
            "start-stop-daemon",
            "--stop",
            "--oknodo",
            "--exec",
            NATS_BIN,
            "--retry",
            "TERM/10/KILL/5",
        ],
        check=True,
        timeout=30,
    )


def start_nats(timeout_s: float = 30.0) -> None:
    """Start the broker with the machine's own command and wait until JetStream answers."""
    subprocess.run(NATS_START, check=True, timeout=30)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:

            async def probe():
                nc = await nats.connect(connect_timeout=1, max_reconnect_attempts=0)
                try:
                    await nc.jetstream(timeout=2).account_info()
                finally:
                    await nc.close()

            run(probe(), timeout=5)
            return
        except Exception:
            time.sleep(0.2)
    raise AssertionError("nats-server did not come back; see /var/log/nats-server.log")


def start_consumer(
    config: JetStreamConfig,
    home: Path,
    log: Path,
    *extra: str,
    max_deliver: int | None = None,
    program: tuple[str, ...] = ("-m", "ingestion"),
) -> subprocess.Popen:
    """The consumer as a user starts it; ``program`` replaces ``-m ingestion`` (a wrapper)."""
    args = [
        sys.executable, *program, "consume", "--home", str(home),
        "--stream", config.stream, "--subject", config.subject, "--durable", config.durable,
        "--dead-letter-stream", config.dead_letter_stream,
        "--dead-letter-subject", config.dead_letter_subject,
        "--max-deliver", str(max_deliver or config.max_deliver),
        "--ack-wait", str(config.ack_wait_s), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def publish(config: JetStreamConfig, path: Path) -> subprocess.CompletedProcess[str]:
    args = [
        sys.executable, "-m", "ingestion", "publish", str(path),
        "--stream", config.stream, "--subject", config.subject, "--durable", config.durable,
        "--dead-letter-stream", config.dead_letter_stream,
        "--dead-letter-subject", config.dead_letter_subject,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def file_path_oracle(path: Path, scratch: Path) -> tuple[set[str], list[str]]:
    """What the landing-zone path makes of the same file: corpus record ids, and the reason
    codes of the quarantined records (sorted)."""
    landing = scratch / "landing"
    landing.mkdir(parents=True)
    (landing / path.name).write_bytes(path.read_bytes())
    config = IngestConfig(landing_dir=landing, lake_dir=scratch / "lake")
    ingest(config)
    ids = set(lake.read_corpus(config.lake_dir, columns=["record_id"]).column(0).to_pylist())
    codes = lake.read_table(config.quarantine_path).column("reason_code").to_pylist()
    return ids, sorted(codes)


def stream_rows(lake_dir: Path, source: str) -> tuple[pa.Table, pa.Table]:
    """(corpus rows, quarantine rows) that came from ``source``."""
    corpus = lake.read_corpus(lake_dir)
    corpus = corpus.filter(pa.compute.equal(corpus.column("source_file"), source))
    try:
        quarantine = lake.read_table(lake_dir / "quarantine")
        quarantine = quarantine.filter(pa.compute.equal(quarantine.column("source_file"), source))
    except FileNotFoundError:
        quarantine = lake.QUARANTINE_SCHEMA.empty_table()
    return corpus, quarantine


def drained(config: JetStreamConfig) -> bool:
    """Every message of the stream committed and acknowledged by the durable consumer (False
    while the consumer process has not created the durable yet)."""
    try:
        info = consumer_info(config)
    except NotFoundError:
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0
