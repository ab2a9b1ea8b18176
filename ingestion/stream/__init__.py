"""Streaming ingestion: records published to a broker reach the corpus in micro-batches.

``source`` is the broker interface (``StreamSource``), ``jetstream`` its NATS JetStream
implementation, ``batch`` the file path's record contract applied to a micro-batch,
``committer`` the pull -> commit -> ack loop, ``ledger`` the per-commit ledger that the
orchestrator reads, ``publish`` the publisher behind ``python -m ingestion publish FILE``
and ``consume`` the long-running consumer behind ``python -m ingestion consume``.
"""
