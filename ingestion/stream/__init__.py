"""Streaming ingestion: records published to a broker reach the corpus in micro-batches.

``source`` is the broker interface (``StreamSource``), ``jetstream`` its NATS JetStream
implementation, ``batch`` the file path's record contract applied to a micro-batch,
``committer`` the pull -> commit -> ack loop, ``ledger`` the per-commit ledger the
orchestrator reads, ``publish`` the publisher, ``metrics`` the consumer's Prometheus metrics
and ``cli`` the commands ``python -m ingestion publish FILE`` and ``python -m ingestion consume``.
"""
