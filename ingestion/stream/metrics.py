"""Prometheus metrics of the stream consumer, on their own registry (one per consumer, so
several in one process, as in tests, do not collide); ``serve`` exposes them over HTTP."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class StreamMetrics:
    def __init__(self, source: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"source": source}
        self.lag = Gauge(
            "mlops_stream_consumer_lag_messages",
            "Messages published but not yet committed and acknowledged (pending + unacked).",
            ["source"],
            registry=self.registry,
        ).labels(**labels)
        self._records = Counter(
            "mlops_stream_records",
            "Streamed records by outcome.",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.commits = Counter(
            "mlops_stream_commits",
            "Micro-batches committed to the lake.",
            ["source"],
            registry=self.registry,
        ).labels(**labels)
        self.commit_failures = Counter(
            "mlops_stream_commit_failures",
            "Failed attempts to write a micro-batch to the lake (retried; nothing acked).",
            ["source"],
            registry=self.registry,
        ).labels(**labels)
        self.lake_unavailable = Gauge(
            "mlops_stream_lake_unavailable",
            "1 while the consumer is waiting for the lake to accept a write, else 0.",
            ["source"],
            registry=self.registry,
        ).labels(**labels)
        self.commit_seconds = Histogram(
            "mlops_stream_commit_seconds",
            "Time to build and commit one micro-batch.",
            ["source"],
            registry=self.registry,
        ).labels(**labels)
        self.source = source

    def records(self, outcome: str, n: int) -> None:
        if n:
            self._records.labels(source=self.source, outcome=outcome).inc(n)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
