"""The stream in Dagster: each micro-batch commit as a `corpus` materialization, and the
consumer's lag as an asset check.

The consumer itself is a long-running process (`python -m ingestion consume`: a Deployment
in production), not a Dagster run: a run per micro-batch would cost seconds of start-up for a
batch that takes milliseconds, and the committer must own its broker subscription between
batches. Dagster observes it. `stream_commits_sensor` reads the commit ledger the consumer
writes (`lake/stream_commits`) from the Delta version its cursor holds and reports one
`corpus` materialization per commit, with the corpus Delta version as the data version and
the batch's counts, so the asset's history shows the stream beside the landed files; on the
same tick it asks the broker for the durable consumer's lag and reports `stream_consumer_lag`
(WARN past `lag_warn_messages`). The check can also be run on demand from the UI.
"""

from __future__ import annotations

import asyncio
import os

import dagster as dg
import nats
from nats.js.errors import NotFoundError

from ingestion.stream import ledger
from ingestion.stream.jetstream import JetStreamConfig
from orchestration.resources import MlopsHome

DEFAULT_URL = "nats://127.0.0.1:4222"


class StreamResource(dg.ConfigurableResource):
    """Where the record stream is and when its lag deserves a warning. `url` empty means
    `$MLOPS_NATS_URL`, else the local broker; `stream` empty means `$MLOPS_NATS_STREAM`,
    else `MLOPS_RECORDS` (the consumer's defaults too)."""

    url: str | None = None
    stream: str | None = None
    durable: str = JetStreamConfig.durable
    lag_warn_messages: int = 10_000
    timeout_s: float = 5.0

    def broker_url(self) -> str:
        return self.url or os.environ.get("MLOPS_NATS_URL") or DEFAULT_URL

    def stream_name(self) -> str:
        return self.stream or os.environ.get("MLOPS_NATS_STREAM") or JetStreamConfig.stream

    def lag(self) -> tuple[int, int] | None:
        """(pending, unacked) of the durable consumer; None if it does not exist yet. Raises
        OSError / TimeoutError / nats errors when the broker cannot be asked."""

        async def ask():
            nc = await nats.connect(
                self.broker_url(),
                connect_timeout=self.timeout_s,
                max_reconnect_attempts=0,
                allow_reconnect=False,
            )
            try:
                js = nc.jetstream(timeout=self.timeout_s)
                info = await js.consumer_info(self.stream_name(), self.durable)
                return info.num_pending or 0, info.num_ack_pending or 0
            except NotFoundError:
                return None
            finally:
                await nc.close()

        return asyncio.run(asyncio.wait_for(ask(), 3 * self.timeout_s))


def lag_evaluation(stream: StreamResource) -> dg.AssetCheckEvaluation:
    try:
        lag = stream.lag()
    except Exception as exc:
        return dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("corpus"),
            check_name="stream_consumer_lag",
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"the broker at {stream.broker_url()} did not answer: {exc!r}",
            metadata={"broker": stream.broker_url()},
        )
    pending, unacked = lag or (0, 0)
    total = pending + unacked
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("corpus"),
        check_name="stream_consumer_lag",
        # no durable consumer means nothing was streamed yet: nothing lags (a corpus fed only
        # by landed files must not carry a warning on every run of the main job)
        passed=total <= stream.lag_warn_messages,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"consumer {stream.durable} of stream {stream.stream_name()} does not exist yet"
            if lag is None
            else f"{total} messages not yet committed (threshold {stream.lag_warn_messages})"
        ),
        metadata={
            "lag_messages": total,
            "pending": pending,
            "unacked": unacked,
            "threshold": stream.lag_warn_messages,
            "stream": stream.stream_name(),
            "durable": stream.durable,
        },
    )


@dg.asset_check(
    asset="corpus",
    name="stream_consumer_lag",
    description=(
        "Messages published to the record stream but not yet committed to the corpus by the "
        "durable consumer (pending + unacknowledged); warns past `lag_warn_messages`."
    ),
)
def stream_consumer_lag(stream: StreamResource) -> dg.AssetCheckResult:
    evaluation = lag_evaluation(stream)
    return dg.AssetCheckResult(
        passed=evaluation.passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=evaluation.description,
        metadata=evaluation.metadata,
    )


def _materialization(row: dict) -> dg.AssetMaterialization:
    version = row["corpus_version"]
    return dg.AssetMaterialization(
        asset_key="corpus",
        description=f"stream commit of messages {row['first_sequence']}..{row['last_sequence']}",
        metadata={
            "source": row["source"],
            "data_version": version if version is not None else -1,
            "first_sequence": row["first_sequence"],
            "last_sequence": row["last_sequence"],
            "messages": row["messages"],
            "accepted": row["accepted"],
            "duplicates": row["duplicates"],
            "quarantined": row["quarantined"],
            "dead_lettered": row["dead_lettered"],
            "retried": row["retried"],
            "committed_at": row["committed_at"].isoformat(),
            "consumer_run": row["run_id"],
        },
        tags={"dagster/data_version": str(version)} if version is not None else None,
    )


def stream_commits_sensor_every(interval_s: int) -> dg.SensorDefinition:
    """The sensor ticking every ``interval_s`` seconds (``MLOPS_STREAM_SENSOR_INTERVAL_S``,
    read by the code location when it builds its definitions: Dagster fixes a sensor's
    interval in its definition)."""
    return dg.sensor(
        name="stream_commits_sensor",
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Reports each micro-batch the stream consumer committed as a `corpus` "
            "materialization (data version, counts) and the consumer's lag as the "
            "`stream_consumer_lag` check."
        ),
    )(_stream_commits)


def _stream_commits(context: dg.SensorEvaluationContext, mlops: MlopsHome, stream: StreamResource):
    after = int(context.cursor) if context.cursor else None
    rows, version = ledger.read_commits(mlops.lake(), after)
    if version is None:
        return dg.SkipReason("no stream commits yet: start `python -m ingestion consume`")
    events: list = [_materialization(row) for row in rows.to_pylist()]
    events.append(lag_evaluation(stream))
    return dg.SensorResult(asset_events=events, cursor=str(version))
