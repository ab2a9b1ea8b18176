"""``python -m ingestion publish FILE`` and ``python -m ingestion consume``.

``publish`` sends a file's records to the stream and prints a JSON summary. ``consume`` is the
long-running consumer: micro-batches into ``$MLOPS_HOME/lake`` until SIGTERM or SIGINT, which
let the batch in hand finish (commit, then ack) before it exits; Prometheus metrics on
``--metrics-port``. Both create the streams and the durable consumer if they are missing.
Broker settings come from flags, defaulting to ``MLOPS_NATS_URL`` and ``MLOPS_NATS_STREAM``
(read here, at run time) and the names in ``JetStreamConfig``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from ingestion.stream.committer import CommitterConfig, MicroBatchCommitter
from ingestion.stream.jetstream import JetStreamConfig, JetStreamSource
from ingestion.stream.metrics import StreamMetrics
from ingestion.stream.publish import publish_file
from observability.settings import home_from, mlops_home

log = logging.getLogger(__name__)


def _broker_flags(parser: argparse.ArgumentParser) -> None:
    d = JetStreamConfig()
    parser.add_argument("--url", default=None, help=f"NATS URL (MLOPS_NATS_URL, else {d.url})")
    parser.add_argument("--stream", default=None, help=f"MLOPS_NATS_STREAM, else {d.stream}")
    parser.add_argument("--subject", default=d.subject)
    parser.add_argument("--durable", default=d.durable, help="durable consumer name")
    parser.add_argument("--dead-letter-stream", default=d.dead_letter_stream)
    parser.add_argument("--dead-letter-subject", default=d.dead_letter_subject)
    parser.add_argument("--max-deliver", type=int, default=d.max_deliver)
    parser.add_argument("--ack-wait", type=float, default=d.ack_wait_s, help="seconds")


def broker_config(args: argparse.Namespace) -> JetStreamConfig:
    return JetStreamConfig(
        url=args.url or os.environ.get("MLOPS_NATS_URL") or JetStreamConfig.url,
        stream=args.stream or os.environ.get("MLOPS_NATS_STREAM") or JetStreamConfig.stream,
        subject=args.subject,
        durable=args.durable,
        dead_letter_stream=args.dead_letter_stream,
        dead_letter_subject=args.dead_letter_subject,
        max_deliver=args.max_deliver,
        ack_wait_s=args.ack_wait,
    )


async def consume(
    source_config: JetStreamConfig, config: CommitterConfig, metrics_port: int | None
) -> None:
    source = await JetStreamSource.open(source_config)
    metrics = StreamMetrics(source.name)
    if metrics_port:
        metrics.serve(metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    committer = MicroBatchCommitter(source, config, metrics=metrics)
    committer.warm_up()
    log.info(
        "consuming %s (durable %s) into %s: up to %d messages or %.1fs per batch",
        source.name,
        source_config.durable,
        config.lake_dir,
        config.max_messages,
        config.max_wait_s,
    )
    try:
        await committer.run(stop)
    finally:
        await source.close()


def main(argv: list[str] | None = None) -> int:
    from observability.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m ingestion")
    commands = parser.add_subparsers(dest="command", required=True)
    pub = commands.add_parser("publish", help="send a file's records to the stream")
    pub.add_argument("file", type=Path, help="a .jsonl, .csv or .parquet file")
    _broker_flags(pub)
    con = commands.add_parser("consume", help="commit the stream into the lake (long-running)")
    con.add_argument("--home", type=Path, default=None, help="MLOPS_HOME (default: env)")
    con.add_argument("--batch-messages", type=int, default=CommitterConfig.max_messages)
    con.add_argument("--batch-wait", type=float, default=CommitterConfig.max_wait_s, help="seconds")
    con.add_argument("--metrics-port", type=int, default=None)
    _broker_flags(con)
    args = parser.parse_args(argv)
    configure_logging("ingestion")
    # its import logs dozens of INFO lines about its own decorators
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    try:
        source_config = broker_config(args)
        if args.command == "publish":
            report = asyncio.run(publish_file(args.file, source_config))
            print(json.dumps(asdict(report), default=str))
            return 0
        home = home_from(args.home) if args.home else mlops_home()
        config = CommitterConfig(
            lake_dir=home / "lake",
            max_messages=args.batch_messages,
            max_wait_s=args.batch_wait,
        )
        asyncio.run(consume(source_config, config, args.metrics_port))
        return 0
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
