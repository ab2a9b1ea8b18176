"""Streaming ingestion: records/s into Delta against the broker's raw consume rate, and
publish-to-committed latency.

    python benchmarks/stream_ingest.py [--messages 50000] [--rate 500] [--seconds 20]

Needs the NATS JetStream broker at 127.0.0.1:4222 (``MLOPS_NATS_URL``); uses streams with a
random suffix and deletes them. Same run, same stream, same messages:

- raw: a bare durable pull consumer fetching 1,000 at a time and acking each message: the
  broker + client ceiling, with no work done on the records;
- ours: ``MicroBatchCommitter`` with its defaults on a second durable of the same stream,
  into a fresh lake (parse, screen, hash, dedupe, the expectation suite, Delta commits of
  corpus and ledger, acks). Timed after ``warm_up`` (suite built, ids loaded).

Latency: a publisher process sends ``rate`` messages/s for ``seconds`` to a fresh stream while
ours consumes it with its defaults; each message's latency is from the broker's timestamp
(when the stream stored it) to the moment its ack is sent, which is after its commit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from nats.js import api  # noqa: E402

from ingestion.stream.committer import CommitterConfig, MicroBatchCommitter  # noqa: E402
from ingestion.stream.jetstream import JetStreamConfig, JetStreamSource  # noqa: E402

PUBLISHER = r"""
import asyncio, json, sys, time, nats
url, subject, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
async def main():
    nc = await nats.connect(url)
    js = nc.jetstream()
    start, sent, futures = time.monotonic(), 0, []
    while (now := time.monotonic() - start) < seconds:
        due = int(now * rate)
        while sent < due:
            body = json.dumps({"text": f"latency record {sent}"}).encode()
            futures.append(await js.publish_async(subject, body))
            sent += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*futures)
    await nc.close()
    print(sent)
asyncio.run(main())
"""


def _config(url: str) -> JetStreamConfig:
    suffix = uuid.uuid4().hex[:8]
    return JetStreamConfig(
        url=url,
        stream=f"BENCH_{suffix}",
        subject=f"bench.{suffix}",
        dead_letter_stream=f"BENCH_{suffix}_DLQ",
        dead_letter_subject=f"bench.{suffix}.dead",
    )


async def _publish(js, subject: str, n: int) -> None:
    for start in range(0, n, 5000):
        futures = [
            await js.publish_async(subject, json.dumps({"text": f"record {i}", "id": i}).encode())
            for i in range(start, min(n, start + 5000))
        ]
        await asyncio.gather(*futures)


async def _raw_rate(nc, config: JetStreamConfig, n: int) -> float:
    js = nc.jetstream()
    await js.add_consumer(
        config.stream,
        api.ConsumerConfig(
            durable_name="raw", ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=20_000
        ),
    )
    sub = await js.pull_subscribe_bind("raw", stream=config.stream)
    got, started = 0, time.perf_counter()
    while got < n:
        for message in await sub.fetch(1000, timeout=5):
            await message.ack()
            got += 1
    await nc.flush()
    return n / (time.perf_counter() - started)


async def _ours_rate(config: JetStreamConfig, lake: Path, n: int) -> tuple[float, int]:
    source = await JetStreamSource.open(config)
    try:
        committer = MicroBatchCommitter(source, CommitterConfig(lake))
        committer.warm_up()
        got, commits, started = 0, 0, time.perf_counter()
        while got < n:
            report = await committer.step()
            if report is not None:
                got += report.messages
                commits += 1
        return n / (time.perf_counter() - started), commits
    finally:
        await source.close()


async def _latency(config: JetStreamConfig, lake: Path, rate: int, seconds: float) -> list[float]:
    source = await JetStreamSource.open(config)
    latencies: list[float] = []
    ack = source.ack

    async def timed_ack(deliveries):
        now = time.time()
        latencies.extend(now - d.published_at.timestamp() for d in deliveries)
        await ack(deliveries)

    source.ack = timed_ack
    try:
        committer = MicroBatchCommitter(source, CommitterConfig(lake))
        committer.warm_up()
        publisher = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, config.url, config.subject, str(rate), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        while publisher.poll() is None or (await source.lag()).total:
            await committer.step()
        sent = int(publisher.stdout.read())
        assert len(latencies) == sent, f"{sent} sent, {len(latencies)} committed"
        return sorted(latencies)
    finally:
        await source.close()


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


async def main(args: argparse.Namespace) -> None:
    url = os.environ.get("MLOPS_NATS_URL", "nats://127.0.0.1:4222")
    throughput, latency = _config(url), _config(url)
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        for config in (throughput, latency):
            await js.add_stream(api.StreamConfig(name=config.stream, subjects=[config.subject]))
        await _publish(js, throughput.subject, args.messages)
        with tempfile.TemporaryDirectory() as tmp:
            raw = await _raw_rate(nc, throughput, args.messages)
            ours, commits = await _ours_rate(throughput, Path(tmp) / "a", args.messages)
            lat = await _latency(latency, Path(tmp) / "b", args.rate, args.seconds)
    finally:
        for config in (throughput, latency):
            for name in (config.stream, config.dead_letter_stream):
                with contextlib.suppress(Exception):
                    await js.delete_stream(name)
        await nc.close()
    print(f"load average {os.getloadavg()[0]:.1f}; {args.messages} messages")
    print(f"raw consume (fetch 1000 + ack): {raw:,.0f} msg/s")
    print(
        f"streamed into Delta (defaults: {CommitterConfig.max_messages} msgs / "
        f"{CommitterConfig.max_wait_s:g} s, {commits} commits): {ours:,.0f} records/s"
    )
    print(f"ratio ours / raw: {ours / raw:.2f}")
    print(f"publish-to-committed at {args.rate} msg/s for {args.seconds:g} s ({len(lat)} messages): "
          f"p50 {_pct(lat, 0.5) * 1000:.0f} ms, p99 {_pct(lat, 0.99) * 1000:.0f} ms, "
          f"max {lat[-1] * 1000:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=500, help="messages/s in the latency run")
    parser.add_argument("--seconds", type=float, default=20.0)
    asyncio.run(main(parser.parse_args()))
