"""The streaming source on NATS JetStream: a durable pull consumer with explicit acks.

Why JetStream rather than RabbitMQ quorum queues: a JetStream stream is a replayable log (the
records stay after they are consumed, by limits retention, so a new consumer or a rebuilt
lake can read them again, as with a Kafka topic), every message carries a stable stream
sequence (the key quarantine rows and the commit ledger use, so a redelivery is recognised
without any extra id), pull consumers let the committer ask for exactly one micro-batch when
it is ready for one (back-pressure by construction: nothing is pushed while the lake is
down), the consumer's pending count is the lag with no extra bookkeeping, and the
publisher's ``Nats-Msg-Id`` gives de-duplicated publishing. A quorum queue deletes a message
once acked, has no sequence and no replay, and pushes to consumers up to a prefetch count.

The committer dead-letters a message itself: on its last allowed delivery when processing it
raises, or on the delivery after that when the consumer never finished with it (it died on
it each time): it republishes the bytes to the dead-letter stream with the reason in headers,
waits for the stream's acknowledgement, then terminates the original. The broker's own
delivery limit on the consumer is ``max_deliver + 2``, so that the delivery past the limit
happens, plus one spare should the consumer die while dead-lettering. Republishing ourselves
rather than reacting to the server's MAX_DELIVERIES advisory because the advisory is a plain
NATS event (lost if no one listens at that instant, and a consumer that dies on a message is
not listening), carries no reason, and would leave us to read the message back by sequence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import NotFoundError

from ingestion.stream.source import Delivery, Lag

#: Deliveries the broker lets one consumer hold unacknowledged: the largest micro-batch.
MAX_ACK_PENDING = 20_000
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_SUBJECT = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True)
class JetStreamConfig:
    url: str = "nats://127.0.0.1:4222"
    stream: str = "MLOPS_RECORDS"
    subject: str = "mlops.records"
    durable: str = "corpus-writer"
    dead_letter_stream: str = "MLOPS_RECORDS_DLQ"
    dead_letter_subject: str = "mlops.records.dead"
    max_deliver: int = 5
    ack_wait_s: float = 60.0
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for field_name in ("stream", "durable", "dead_letter_stream"):
            value = getattr(self, field_name)
            if not _NAME.match(value):
                raise ValueError(
                    f"JetStreamConfig.{field_name} must be letters, digits, '-' or '_', "
                    f"got {value!r}"
                )
        for field_name in ("subject", "dead_letter_subject"):
            value = getattr(self, field_name)
            if not _SUBJECT.match(value):
                raise ValueError(
                    f"JetStreamConfig.{field_name} must be a literal dotted subject, got {value!r}"
                )
        if self.subject == self.dead_letter_subject:
            raise ValueError("JetStreamConfig.dead_letter_subject must differ from subject")
        if self.max_deliver < 1:
            raise ValueError(f"JetStreamConfig.max_deliver must be >= 1, got {self.max_deliver}")
        for field_name in ("ack_wait_s", "connect_timeout_s", "request_timeout_s"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"JetStreamConfig.{field_name} must be positive")


async def connect(config: JetStreamConfig) -> Client:
    """A connection that reconnects for ever (a broker restart is an outage, not an end);
    every request made on it still has its own timeout."""
    return await nats.connect(
        config.url,
        connect_timeout=config.connect_timeout_s,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
    )


async def ensure_streams(nc: Client, config: JetStreamConfig, consumer: bool = True) -> None:
    """Create the record stream, the dead-letter stream and (unless ``consumer`` is False, as
    for a publisher) the durable consumer if missing. Idempotent; an existing consumer keeps
    its position and settings."""
    js = nc.jetstream(timeout=config.request_timeout_s)
    for name, subject in (
        (config.stream, config.subject),
        (config.dead_letter_stream, config.dead_letter_subject),
    ):
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(
                api.StreamConfig(
                    name=name,
                    subjects=[subject],
                    storage=api.StorageType.FILE,
                    retention=api.RetentionPolicy.LIMITS,
                    duplicate_window=120.0,
                )
            )
    if not consumer:
        return
    try:
        await js.consumer_info(config.stream, config.durable)
    except NotFoundError:
        await js.add_consumer(
            config.stream,
            api.ConsumerConfig(
                durable_name=config.durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                # one delivery past the limit, for a message the consumer died on each time
                # (dead-lettered unread), and one spare: if the consumer dies while
                # dead-lettering, the message comes back once more to finish that
                max_deliver=config.max_deliver + 2,
                ack_wait=config.ack_wait_s,
                filter_subject=config.subject,
                max_ack_pending=MAX_ACK_PENDING,
            ),
        )


def _delivery(message) -> Delivery:
    # The ack subject is $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.
    # <timestamp ns>.<pending>; splitting it here costs a fraction of nats-py's Metadata object
    # (measured: a third of the consumer's time outside the lake). Other forms (domains) go
    # through nats-py.
    tokens = (message.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        attempt, sequence = int(tokens[4]), int(tokens[5])
        published = datetime.fromtimestamp(int(tokens[7]) / 1e9, UTC)
    else:
        meta = message.metadata
        attempt, sequence, published = meta.num_delivered, meta.sequence.stream, meta.timestamp
    return Delivery(
        data=message.data,
        sequence=sequence,
        attempt=attempt,
        published_at=published,
        headers=dict(message.headers or {}),
        handle=message,
    )


class JetStreamSource:
    """``StreamSource`` over one durable pull consumer. Build it with ``open``."""

    def __init__(self, nc: Client, config: JetStreamConfig, subscription) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=config.request_timeout_s)
        self._sub = subscription
        self.config = config
        self.name = f"nats://{config.stream}"
        self.max_deliver = config.max_deliver

    @classmethod
    async def open(cls, config: JetStreamConfig) -> JetStreamSource:
        nc = await connect(config)
        try:
            await ensure_streams(nc, config)
            js = nc.jetstream(timeout=config.request_timeout_s)
            sub = await js.pull_subscribe_bind(config.durable, stream=config.stream)
        except BaseException:
            await nc.close()
            raise
        return cls(nc, config, sub)

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        try:
            messages = await self._sub.fetch(max_messages, timeout=timeout_s)
        except (NatsTimeout, TimeoutError):  # nats-py raises either when nothing arrived
            return []
        return [_delivery(message) for message in messages]

    async def ack(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            await delivery.handle.ack()
        # acks are fire-and-forget publishes: make sure they left before the caller goes on
        await self._nc.flush(timeout=self.config.request_timeout_s)

    async def keep_alive(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            await delivery.handle.in_progress()
        await self._nc.flush(timeout=self.config.request_timeout_s)

    async def retry(self, delivery: Delivery, delay_s: float) -> None:
        await delivery.handle.nak(delay=delay_s)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        headers = {
            **delivery.headers,
            # Nats-Msg-Id: a repeated dead-lettering (crash before term) is stored once
            "Nats-Msg-Id": f"{self.config.stream}:{delivery.sequence}",
            "Mlops-Reason": reason[:1000],
            "Mlops-Stream": self.config.stream,
            "Mlops-Sequence": str(delivery.sequence),
            "Mlops-Deliveries": str(delivery.attempt),
        }
        await self._js.publish(self.config.dead_letter_subject, delivery.data, headers=headers)
        await delivery.handle.term()

    async def lag(self) -> Lag:
        info = await self._js.consumer_info(self.config.stream, self.config.durable)
        return Lag(pending=info.num_pending or 0, unacked=info.num_ack_pending or 0)

    async def close(self) -> None:
        await self._nc.close()
