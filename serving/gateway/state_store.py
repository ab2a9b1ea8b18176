"""Where the gateway's routing state lives: the interface, and the embedded file store.

A store holds one JSON document (backends, routes, partners, fallback routes, API keys) and
its version, a number that grows with every change. :meth:`StateBackend.update` is the only
way to change it: it reads the *latest* stored document under a lock, lets the caller apply
one admin change to it and writes the result with the version bumped, so two gateway
processes changing the state at once never lose each other's change. Gateways watch the
version (:meth:`~StateBackend.version` plus :meth:`~StateBackend.wait`) and adopt new states.

The same store keeps the replica registry: each gateway process writes a heartbeat with a
private URL of its admin API and metrics, so admin clients can sum counters over the fleet.

Two implementations: :class:`FileStateStore` here (one host, the embedded default; workers
on that host lock the file with ``flock`` and watch its version every ``poll_s``) and
:class:`~serving.gateway.pg_state.PostgresStateStore` (many hosts). Both are blocking: the
gateway calls them from threads, never from its event loop.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from serving.errors import Unavailable
from serving.gateway.state import StateStore

log = logging.getLogger(__name__)

#: A change: gets a copy of the latest stored document, returns the new one and a result.
Change = Callable[[dict], tuple[dict, object]]


class StateUnavailable(Unavailable):
    """The state store cannot be reached (or holds no usable state); admin writes are 503."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "state_store", "state_store_unavailable")


@dataclass(frozen=True)
class Snapshot:
    version: int
    data: dict


@dataclass(frozen=True)
class Replica:
    """One live gateway process, as its heartbeat says."""

    replica_id: str
    url: str  # private base URL: /metrics and /admin of this process alone
    state_version: int
    age_s: float  # seconds since its last heartbeat

    def to_dict(self) -> dict:
        return {
            "id": self.replica_id,
            "url": self.url,
            "state_version": self.state_version,
            "heartbeat_age_s": round(self.age_s, 3),
        }


class StateBackend(Protocol):
    description: str  # where the state lives, for logs and error messages (no secrets)

    def read(self) -> Snapshot: ...

    def version(self) -> int: ...

    def update(self, change: Change, repair_from: dict) -> tuple[Snapshot, object]:
        """Apply ``change`` to the latest state atomically. When the stored state is missing
        or unreadable, ``repair_from`` (the caller's last good state) is the starting point,
        so the write repairs the store."""
        ...

    def wait(self, timeout_s: float) -> None:
        """Block until a change may have happened, at most ``timeout_s``."""
        ...

    def heartbeat(self, replica_id: str, url: str, state_version: int) -> None: ...

    def replicas(self, max_age_s: float) -> list[Replica]: ...

    def leave(self, replica_id: str) -> None: ...

    def close(self) -> None: ...


class FileStateStore:
    """The state in one JSON file (``version`` beside the tables), changed under ``flock``.

    A file that does not parse is moved aside by :class:`~serving.gateway.state.StateStore`
    and read as empty, as a single gateway always did. Replicas are small JSON files in
    ``<state>.replicas/``, their modification time being the heartbeat.
    """

    def __init__(self, path: Path, poll_s: float = 0.5) -> None:
        self.file = StateStore(path)
        self.description = f"state file {path}"
        self.poll_s = poll_s
        self._lock_path = path.with_name(path.name + ".lock")
        self._replicas = path.with_name(path.name + ".replicas")
        self._seen: tuple[int, int, int] | None = None
        self._seen_version = 0
        self._stop = threading.Event()

    def read(self) -> Snapshot:
        with self._locked(fcntl.LOCK_SH):
            return self._read()

    def version(self) -> int:
        try:
            st = self.file.path.stat()
        except FileNotFoundError:
            return 0
        if (st.st_ino, st.st_mtime_ns, st.st_size) != self._seen:
            return self.read().version
        return self._seen_version

    def update(self, change: Change, repair_from: dict) -> tuple[Snapshot, object]:
        with self._locked(fcntl.LOCK_EX):
            current = self._read()
            data, result = change(dict(current.data))
            snapshot = Snapshot(current.version + 1, data)
            self.file.save({**data, "version": snapshot.version})
            return snapshot, result

    def wait(self, timeout_s: float) -> None:
        self._stop.wait(min(timeout_s, self.poll_s))

    def heartbeat(self, replica_id: str, url: str, state_version: int) -> None:
        StateStore(self._replicas / f"{replica_id}.json").save(
            {"url": url, "state_version": state_version}
        )

    def replicas(self, max_age_s: float) -> list[Replica]:
        found, now = [], time.time()
        for path in sorted(self._replicas.glob("*.json")):
            try:
                age = now - path.stat().st_mtime
                entry = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # leaving or half-written: the next listing sees it
            if age <= max_age_s:
                found.append(Replica(path.stem, entry["url"], entry["state_version"], age))
        return found

    def leave(self, replica_id: str) -> None:
        (self._replicas / f"{replica_id}.json").unlink(missing_ok=True)

    def close(self) -> None:
        self._stop.set()

    def _read(self) -> Snapshot:
        data = self.file.load()
        version = data.pop("version", 0)
        try:
            st = self.file.path.stat()
            self._seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            self._seen = None
        self._seen_version = version if isinstance(version, int) else 0
        return Snapshot(self._seen_version, data)

    def _locked(self, mode: int):
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        return _Flock(self._lock_path, mode)


class _Flock:
    def __init__(self, path: Path, mode: int) -> None:
        self.path, self.mode = path, mode

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, self.mode)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing drops the lock
