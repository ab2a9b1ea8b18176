"""One gateway replica's view of the shared routing state: admin changes, watching, staleness.

The live tables (:class:`RoutingTable`, :class:`PartnerTable`, :class:`KeyTable`) are read
by the proxy on the event loop. They change only on that loop, by adopting a stored
:class:`Snapshot` whose version is newer than the one held; adoption keeps each unchanged
backend's breaker and slots, each unchanged partner's health and each key's usage, which are
per replica and never stored (like Envoy's outlier detection).

An admin change (:meth:`SharedState.change`) is a function on fresh tables built from the
*latest stored* document, run inside the store's transaction in a worker thread; the
result is adopted at once, so the caller reads its own write. A background thread watches
the store (``LISTEN`` or file polling, and a version read every ``poll_s``), sends a
heartbeat to the replica registry every ``heartbeat_s`` and hands new snapshots to the loop.

When the store cannot be reached the replica keeps serving its last known state: ``/health``
stays 200 with ``"state": "stale"`` and the time since when, ``/metrics`` carries
``gateway_state_connected 0`` and the staleness, and admin changes answer 503 naming the
cause. The watcher retries every ``poll_s`` and resynchronises on its own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.gateway.keys import KeyTable
from serving.gateway.pg_state import PostgresStateStore
from serving.gateway.routing import RoutingTable
from serving.gateway.state_store import (
    FileStateStore,
    Snapshot,
    StateBackend,
    StateUnavailable,
)
from serving.partners.router import PartnerTable

log = logging.getLogger(__name__)

#: An admin operation on (fresh) tables; its return value goes back to the caller.
Operation = Callable[[RoutingTable, PartnerTable, KeyTable], object]


@dataclass(frozen=True)
class SyncPolicy:
    poll_s: float = 0.5  # version read interval: bounds convergence when a NOTIFY is lost
    heartbeat_s: float = 2.0
    replica_ttl_s: float = 6.0  # a replica silent this long is left out of fleet views

    def __post_init__(self) -> None:
        if not 0 < self.poll_s <= self.heartbeat_s < self.replica_ttl_s:
            raise ValueError(
                "need 0 < poll_s <= heartbeat_s < replica_ttl_s, got "
                f"{self.poll_s}, {self.heartbeat_s}, {self.replica_ttl_s}"
            )


class SharedState:
    def __init__(
        self,
        store: StateBackend,
        table: RoutingTable,
        partners: PartnerTable,
        keys: KeyTable,
        advertise_url: str | None = None,
        policy: SyncPolicy | None = None,
    ) -> None:
        self.store, self.table, self.partners, self.keys = store, table, partners, keys
        self.advertise_url, self.policy = advertise_url, policy or SyncPolicy()
        self.replica_id = f"{uuid.uuid4().hex[:12]}"
        self.version = -1
        self._data: dict = {}
        self._pending: Operation | None = None  # the serving config, until it is stored once
        self._connected = False
        self._last_ok = time.time()
        self._beat = 0.0
        self._stale_since: float | None = None
        self._error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- start-up and shutdown -----------------------------------------------------------

    def load(self, startup: Operation | None = None) -> None:
        """First read (blocking, before the server starts), then ``startup`` stored as a
        change. With the store down the replica starts empty and stale, and the watcher
        does both once the store answers."""
        self._pending = startup
        try:
            self._sync_once()
        except StateUnavailable as exc:
            self._lost(exc)
            log.error("starting without routing state: %s", exc)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._watch, name="gateway-state", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.policy.heartbeat_s + 6)
        if self.advertise_url is not None and self._connected:
            try:
                self.store.leave(self.replica_id)
            except StateUnavailable as exc:
                log.warning("could not leave the replica registry: %s", exc)
        self.store.close()

    # -- admin changes --------------------------------------------------------------------

    async def change(self, op: Operation) -> object:
        try:
            snapshot, result = await asyncio.to_thread(
                self.store.update, self._changer(op), self._data
            )
        except StateUnavailable as exc:
            raise StateUnavailable(
                f"admin change not applied: {exc.message}. This replica keeps serving its last"
                f" known state (version {self.version}); retry when the state store is back"
            ) from None
        self._adopt(snapshot)
        return result

    async def replicas(self) -> list[dict]:
        found = await asyncio.to_thread(self.store.replicas, self.policy.replica_ttl_s)
        return [r.to_dict() for r in found]

    def _changer(self, op: Operation):
        def change(data: dict) -> tuple[dict, object]:
            table = RoutingTable(
                breaker_threshold=self.table.breaker_threshold,
                breaker_cooldown_s=self.table.breaker_cooldown_s,
                max_concurrency=self.table.max_concurrency,
            )
            partners = PartnerTable(table, self.partners.policy, wall=self.partners.wall)
            keys = KeyTable(self.keys.required, clock=self.keys.clock)
            for part in (table, partners, keys):
                part.load_dict(data)
            result = op(table, partners, keys)
            return {**table.to_dict(), **partners.to_dict(), **keys.to_dict()}, result

        return change

    # -- watching -----------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync_once()
                self.store.wait(self.policy.poll_s)
            except StateUnavailable as exc:
                self._lost(exc)
                self._stop.wait(self.policy.poll_s)
            except Exception:  # a bug must not end the watcher: the replica would go silent
                log.exception("gateway state watcher failed; retrying")
                self._stop.wait(self.policy.poll_s)

    def _sync_once(self) -> None:
        if self._pending is not None:
            snapshot, _ = self.store.update(self._changer(self._pending), self._data)
            self._pending = None
            self._post(snapshot)
        if self.store.version() > self.version:
            self._post(self.store.read())
        now = time.time()
        if self.advertise_url is not None and now - self._beat >= self.policy.heartbeat_s:
            self.store.heartbeat(self.replica_id, self.advertise_url, self.version)
            self._beat = now
        if self._stale_since is not None:
            log.warning(
                "gateway state store %s back after %.1f s; serving version %s",
                self.store.description,
                now - self._stale_since,
                self.version,
            )
        self._connected, self._last_ok = True, now
        self._stale_since = self._error = None

    def _lost(self, exc: StateUnavailable) -> None:
        if self._connected or self._error != exc.message:
            log.error("gateway state store: %s; serving last known state", exc.message)
        self._connected, self._error = False, exc.message
        if self._stale_since is None:
            self._stale_since = self._last_ok

    def _post(self, snapshot: Snapshot) -> None:
        if self._loop is None:
            self._adopt(snapshot)
        else:
            self._loop.call_soon_threadsafe(self._adopt, snapshot)

    def _adopt(self, snapshot: Snapshot) -> None:
        if snapshot.version <= self.version:
            return  # an older snapshot handed over after a newer admin write
        try:
            self.table.replace_dict(snapshot.data)
            self.partners.replace_dict(snapshot.data)
            self.keys.replace_dict(snapshot.data)
        except Exception as exc:  # a hand-edited state: keep serving what we have
            log.error("state version %s not adopted: %s", snapshot.version, exc)
            self._error = f"state version {snapshot.version} not adopted: {exc}"
            return
        self.version, self._data = snapshot.version, snapshot.data

    # -- reporting ----------------------------------------------------------------------

    def health(self) -> dict:
        body = {
            "status": "ok",
            "state": "current" if self._connected else "stale",
            "state_version": self.version,
            "state_store": self.store.description,
            "replica": self.replica_id,
        }
        if self._stale_since is not None:
            body["stale_since"] = datetime.fromtimestamp(self._stale_since, UTC).isoformat()
            body["staleness_s"] = round(time.time() - self._stale_since, 3)
        if self._error is not None:
            body["error"] = self._error
        return body

    def collector(self) -> Collector:
        return _StateCollector(self)


class _StateCollector(Collector):
    def __init__(self, shared: SharedState) -> None:
        self.shared = shared

    def collect(self):
        s = self.shared
        stale = 0.0 if s._stale_since is None else time.time() - s._stale_since
        for name, doc, value in (
            (
                "gateway_state_version",
                "Version of the routing state this replica serves",
                s.version,
            ),
            (
                "gateway_state_connected",
                "1 when the state store answered the last check",
                int(s._connected),
            ),
            (
                "gateway_state_staleness_seconds",
                "Seconds since the state store last answered (0 while it answers)",
                stale,
            ),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


def open_state_store(
    state_url: str | None,
    state_path: Path,
    table: str = "gateway_state",
    schema: str = "public",
) -> StateBackend:
    """The PostgreSQL store for a ``postgresql://`` URL, else the file at ``state_path``."""
    if not state_url:
        return FileStateStore(state_path)
    if not state_url.startswith(("postgresql://", "postgres://")):
        raise ValueError(
            f"gateway state URL must start with postgresql://, got {state_url.split(':')[0]!r}:"
            " set MLOPS_GATEWAY_STATE_URL (or --state-url) to a PostgreSQL URL, or unset it"
            " for the state file"
        )
    return PostgresStateStore(state_url, table=table, schema=schema)
