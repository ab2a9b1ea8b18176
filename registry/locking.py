"""The promotion guard: one alias writer at a time, across processes and hosts.

MLflow has no compare-and-set on aliases, so two promotions that each read "champion is
v3" and then write could both succeed and leave ``previous-champion`` and ``champion``
from different promotions. Every promotion and rollback therefore runs its
read-check-write sequence while holding this lock, and re-reads the aliases afterwards.

* PostgreSQL backend: a session-level ``pg_try_advisory_lock`` on the registry database.
  It spans every host that reaches the database, needs no table, and PostgreSQL releases
  it when the holder's connection dies, so a killed promoter never leaves it stuck.
* SQLite / single host: ``flock`` on a lock file. The kernel releases it when the holder
  dies, for the same reason; a stale lock file on disk is harmless.

Both poll with a deadline instead of blocking forever, and raise ``PromotionLockTimeout``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from registry.errors import PromotionLockTimeout

_POLL_S = 0.1


def _advisory_key(name: str) -> int:
    # pg advisory locks take a signed 64-bit key; derive it stably from the model name.
    return int.from_bytes(
        hashlib.sha256(f"mlops-registry:{name}".encode()).digest()[:8], "big", signed=True
    )


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PromotionLockTimeout(
                        f"registry lock file {path} held by another promotion for over "
                        f"{timeout_s:.0f}s; retry later (lock_timeout_s sets the wait)"
                    ) from None
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _pg_lock(url: str, name: str, timeout_s: float) -> Iterator[None]:
    import psycopg2  # only a PostgreSQL-backed registry needs the driver

    key = _advisory_key(name)
    try:
        conn = psycopg2.connect(url, connect_timeout=10)
    except psycopg2.OperationalError as exc:
        raise PromotionLockTimeout(f"cannot reach lock database {url}: {exc}".strip()) from exc
    conn.autocommit = True
    try:
        deadline = time.monotonic() + timeout_s
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if cur.fetchone()[0]:
                    break
                if time.monotonic() >= deadline:
                    raise PromotionLockTimeout(
                        f"registry advisory lock {key} on {url} held by another promotion for "
                        f"over {timeout_s:.0f}s; retry later (lock_timeout_s sets the wait)"
                    )
                time.sleep(_POLL_S)
            try:
                yield
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()


def registry_lock(lock_url: str, model_name: str, timeout_s: float):
    """Context manager holding the promotion lock named by ``lock_url``."""
    if lock_url.startswith("postgresql://"):
        return _pg_lock(lock_url, model_name, timeout_s)
    if not lock_url:
        raise ValueError("lock_url must name a postgresql:// database or a lock file path")
    return _file_lock(Path(lock_url.removeprefix("file://")), timeout_s)
