"""The streaming source interface: what the micro-batch committer needs from a broker.

A source hands out deliveries in order, is told afterwards which were committed (ack), which
to hand out again later (retry), and which were given up on (dead-letter). It also reports how
far behind the consumer is. NATS JetStream implements it here (``jetstream.py``); a Kafka
source would map ``fetch`` to ``poll``, ``ack`` to committing the highest offset per partition,
``retry`` to not committing (and seeking back), ``dead_letter`` to producing to a DLQ topic,
and ``lag`` to the log-end offset minus the committed offset.

The interface is async because broker clients are (nats-py, aiokafka); the Delta writes the
committer does in between are synchronous and simply block the loop, which is fine for one
consumer per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass
class Delivery:
    """One message as delivered: its bytes and where it sits in the stream.

    ``sequence`` is the stream position (unique and stable across redeliveries: it is what
    quarantine rows and the commit ledger name), ``attempt`` counts deliveries of this message
    so far, 1 on the first.
    """

    data: bytes
    sequence: int
    attempt: int
    published_at: datetime | None = None
    headers: dict[str, str] = field(default_factory=dict)
    handle: object = None  # the broker client's own message object, for ack / nak


@dataclass(frozen=True)
class Lag:
    """How far the consumer is behind: messages not yet handed out, and handed out but not
    yet acknowledged."""

    pending: int
    unacked: int

    @property
    def total(self) -> int:
        return self.pending + self.unacked


class StreamSource(Protocol):
    #: A name for ``source_file`` in the lake (e.g. ``nats://records``).
    name: str
    #: Deliveries of one message before it is dead-lettered on failure.
    max_deliver: int

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_messages`` deliveries, waiting at most ``timeout_s`` for the first."""
        ...

    async def ack(self, deliveries: list[Delivery]) -> None:
        """They are committed: never deliver them again."""
        ...

    async def keep_alive(self, deliveries: list[Delivery]) -> None:
        """Still working on them (e.g. waiting for the lake): do not redeliver them yet."""
        ...

    async def retry(self, delivery: Delivery, delay_s: float) -> None:
        """Processing failed: deliver it again after ``delay_s``."""
        ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Give up on it: keep a copy with the reason where an operator finds it, and stop
        delivering it. Returns once the copy is durable."""
        ...

    async def lag(self) -> Lag: ...

    async def close(self) -> None: ...
