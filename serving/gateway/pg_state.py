"""The gateway's routing state in PostgreSQL, shared by every replica (``MLOPS_GATEWAY_STATE_URL``).

One table with a single row ``(id = 1, version bigint, data jsonb, updated_at)``, created if
absent (its schema and name are settings, so tests and several fleets can share a server),
and ``<table>_replicas`` for the replica heartbeats. A change runs in one transaction:
``SELECT ... FOR UPDATE`` on the row, the change applied to the document *read there*, the
row written with ``version + 1``, then ``NOTIFY <table>_changed``: replicas never overwrite
each other's changes. Watchers ``LISTEN`` and also read the version at every
:meth:`wait` timeout, so a notification lost while reconnecting costs at most one poll.

A new row, and one recreated by the next change after it was deleted, starts at a version of
the current epoch in milliseconds, above any count a replica may have seen, so every replica adopts it. A row
whose ``data`` is not a JSON object is reported as unusable (the replicas keep their state)
until a change rewrites it from the writer's last good state.

Every connection has a connect timeout and a statement timeout; an operation that fails on
a broken connection reconnects once, then raises :class:`StateUnavailable`. The URL's
password never appears in messages.
"""

from __future__ import annotations

import json
import logging
import re
import select
import threading
from urllib.parse import urlsplit

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from serving.gateway.state_store import Change, Replica, Snapshot, StateUnavailable

log = logging.getLogger(__name__)

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
_DB_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"postgresql://{host}:{parts.port or 5432}{parts.path}"


class PostgresStateStore:
    def __init__(
        self,
        url: str,
        table: str = "gateway_state",
        schema: str = "public",
        connect_timeout_s: int = 2,
        statement_timeout_ms: int = 5000,
    ) -> None:
        for field, value in (("state table", table), ("state schema", schema)):
            if not _IDENT.fullmatch(value):
                raise ValueError(f"{field} {value!r} must match {_IDENT.pattern}")
        self.url, self.description = url, f"PostgreSQL {_redact(url)} table {schema}.{table}"
        self._table = sql.Identifier(schema, table)
        self._replicas = sql.Identifier(schema, f"{table}_replicas")
        self._schema = sql.Identifier(schema)
        self._channel = sql.Identifier(f"{table}_changed")
        self._options = dict(
            connect_timeout=connect_timeout_s,
            options=f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={statement_timeout_ms}",
            application_name="mlops-gateway",
        )
        self._conn: psycopg2.extensions.connection | None = None  # reads and writes
        self._listen: psycopg2.extensions.connection | None = None  # LISTEN only
        self._lock = threading.Lock()
        self._ensured = False

    # -- reads and writes ---------------------------------------------------------------

    def read(self) -> Snapshot:
        def op(cur) -> Snapshot:
            cur.execute(sql.SQL("SELECT version, data FROM {} WHERE id = 1").format(self._table))
            return self._snapshot(cur.fetchone())

        return self._run(op)

    def version(self) -> int:
        def op(cur) -> int:
            cur.execute(sql.SQL("SELECT version FROM {} WHERE id = 1").format(self._table))
            row = cur.fetchone()
            if row is None:
                raise StateUnavailable(f"{self.description}: the state row is missing")
            return row[0]

        return self._run(op)

    def update(self, change: Change, repair_from: dict) -> tuple[Snapshot, object]:
        def op(cur) -> tuple[Snapshot, object]:
            cur.execute(
                sql.SQL("SELECT version, data FROM {} WHERE id = 1 FOR UPDATE").format(self._table)
            )
            row = cur.fetchone()
            try:
                current = self._snapshot(row)
            except StateUnavailable as exc:
                log.error("%s; rewriting it from this replica's last good state", exc)
                current = Snapshot(0, repair_from)
            data, result = change(dict(current.data))
            payload = json.dumps(data, sort_keys=True)
            if row is None:  # deleted: start above any version a replica has seen
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (id, version, data) VALUES (1,"
                        " (extract(epoch from clock_timestamp()) * 1000)::bigint, %s::jsonb)"
                        " ON CONFLICT (id) DO NOTHING RETURNING version"
                    ).format(self._table),
                    (payload,),
                )
            else:
                cur.execute(
                    sql.SQL(
                        "UPDATE {} SET version = version + 1, data = %s::jsonb,"
                        " updated_at = now() WHERE id = 1 RETURNING version"
                    ).format(self._table),
                    (payload,),
                )
            fetched = cur.fetchone()
            if fetched is None:  # another writer recreated the row first
                raise StateUnavailable(f"{self.description}: concurrent recreation; retry")
            cur.execute(sql.SQL("NOTIFY {}, %s").format(self._channel), (str(fetched[0]),))
            return Snapshot(fetched[0], data), result

        return self._run(op)

    def _snapshot(self, row) -> Snapshot:
        if row is None:
            raise StateUnavailable(f"{self.description}: the state row is missing")
        version, data = row
        if not isinstance(data, dict):
            raise StateUnavailable(
                f"{self.description}: stored data is a JSON {type(data).__name__}, not an"
                " object; the next admin change rewrites it"
            )
        return Snapshot(version, data)

    # -- watching -----------------------------------------------------------------------

    def wait(self, timeout_s: float) -> None:
        try:
            if self._listen is None:
                self._listen = self._connect()
                self._listen.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
                with self._listen.cursor() as cur:
                    cur.execute(sql.SQL("LISTEN {}").format(self._channel))
            if select.select([self._listen], [], [], timeout_s) != ([], [], []):
                self._listen.poll()
                self._listen.notifies.clear()
        except _DB_ERRORS as exc:
            self._drop_listen()
            raise StateUnavailable(f"{self.description} unreachable: {_first_line(exc)}") from None

    # -- replica registry ---------------------------------------------------------------

    def heartbeat(self, replica_id: str, url: str, state_version: int) -> None:
        def op(cur) -> None:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (replica_id, url, state_version, heartbeat_at)"
                    " VALUES (%s, %s, %s, now()) ON CONFLICT (replica_id) DO UPDATE SET"
                    " url = EXCLUDED.url, state_version = EXCLUDED.state_version,"
                    " heartbeat_at = now()"
                ).format(self._replicas),
                (replica_id, url, state_version),
            )

        self._run(op)

    def replicas(self, max_age_s: float) -> list[Replica]:
        def op(cur) -> list[Replica]:
            cur.execute(
                sql.SQL(
                    "SELECT replica_id, url, state_version,"
                    " extract(epoch from now() - heartbeat_at)::float8 FROM {}"
                    " WHERE heartbeat_at > now() - make_interval(secs => %s)"
                    " ORDER BY replica_id"
                ).format(self._replicas),
                (max_age_s,),
            )
            return [Replica(*row) for row in cur.fetchall()]

        return self._run(op)

    def leave(self, replica_id: str) -> None:
        def op(cur) -> None:
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE replica_id = %s").format(self._replicas),
                (replica_id,),
            )

        self._run(op)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self._drop_listen()

    # -- connections --------------------------------------------------------------------

    def _run(self, op):
        """``op(cursor)`` in one transaction; a broken connection is replaced once."""
        with self._lock:
            for attempt in (0, 1):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = self._connect()
                    self._ensure_schema()
                    with self._conn, self._conn.cursor() as cur:
                        return op(cur)
                except _DB_ERRORS as exc:
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    if attempt == 1:
                        raise StateUnavailable(
                            f"{self.description} unreachable: {_first_line(exc)}"
                        ) from None
        raise AssertionError("unreachable")

    def _connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(self.url, **self._options)

    def _ensure_schema(self) -> None:
        if self._ensured:
            return
        with self._conn, self._conn.cursor() as cur:
            # replicas starting together would race on CREATE TABLE IF NOT EXISTS
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.description,))
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self._schema))
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id int PRIMARY KEY CHECK (id = 1),"
                    " version bigint NOT NULL, data jsonb NOT NULL,"
                    " updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(self._table)
            )
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (replica_id text PRIMARY KEY,"
                    " url text NOT NULL, state_version bigint NOT NULL,"
                    " heartbeat_at timestamptz NOT NULL)"
                ).format(self._replicas)
            )
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (id, version, data) SELECT 1,"
                    " (extract(epoch from clock_timestamp()) * 1000)::bigint, '{{}}'::jsonb"
                    " WHERE NOT EXISTS (SELECT 1 FROM {})"
                ).format(self._table, self._table)
            )
        self._ensured = True

    def _drop_listen(self) -> None:
        if self._listen is not None:
            self._listen.close()
            self._listen = None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
