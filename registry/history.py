"""Alias history: every move of ``champion``, ``challenger`` and ``previous-champion``.

MLflow keeps only an alias's current value (a history was asked for in mlflow#2169 and
never built), so the registry keeps its own: one row per alias change, with the time, the
version it moved from and to, who or what moved it (a Dagster run, a sensor, an operator
through the CLI), the kind of move, the reason and the evidence (the gate's verdict, the
canary's per-step record). The rows of one move share a ``move`` id.

Where: a table (``mlops_alias_history``) in the database the promotion lock already uses,
through SQLAlchemy: the registry's PostgreSQL database when the lock is a PostgreSQL
advisory lock (every host that can promote can reach it), otherwise an SQLite file beside
the lock file. Not MLflow tags or runs: a tag holds one value of bounded size, and an MLflow
run per move cannot be written atomically with the alias writes either, while a table gives
ordered, queryable rows ("which version served at T") in one transaction each.

Crash safety: the alias writes and the history row live in two stores, so the row is a
write-ahead record. Under the promotion lock, a move first inserts its rows as ``pending``,
then writes the aliases, reads them back, and marks the rows ``done``. A crash in between
leaves ``pending`` rows; the next move, ``recover`` or ``history`` reconciles them under the
same lock against the aliases as they are (``done`` if the alias holds the row's target,
``aborted`` otherwise). Since every alias writer holds the lock, nothing moves meanwhile,
so the answer is exact. A history store that cannot be written stops the move before any
alias changes: there is never a move without its record.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sqlalchemy as sa

HISTORY_TABLE = "mlops_alias_history"
PENDING, DONE, ABORTED = "pending", "done", "aborted"

_metadata = sa.MetaData()
_table = sa.Table(
    HISTORY_TABLE,
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(256), nullable=False, index=True),
    sa.Column("move", sa.String(32), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("from_version", sa.String(32)),
    sa.Column("to_version", sa.String(32), nullable=False),
    sa.Column("at", sa.String(40), nullable=False),  # ISO-8601 UTC, when the move began
    sa.Column("actor", sa.String(512), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("evidence", sa.Text, nullable=False),  # JSON
    sa.Column("status", sa.String(16), nullable=False),
)
_engines: dict[str, sa.Engine] = {}


@dataclass(frozen=True)
class AliasMove:
    alias: str
    from_version: str | None
    to_version: str


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    move: str
    alias: str
    from_version: str | None
    to_version: str
    at: str
    actor: str
    kind: str
    reason: str
    status: str
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def history_url(lock_url: str) -> str:
    """The history database for a registry whose promotion lock is ``lock_url``."""
    if lock_url.startswith("postgresql://"):
        return lock_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    return f"sqlite:///{Path(lock_url.removeprefix('file://')).parent / 'alias-history.db'}"


def _engine(url: str) -> sa.Engine:
    if url not in _engines:
        if url.startswith("sqlite:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            args = {"timeout": 10}
        else:
            args = {"connect_timeout": 10}
        engine = sa.create_engine(url, connect_args=args, pool_pre_ping=True)
        _metadata.create_all(engine)  # checkfirst: a no-op once the table exists
        _engines[url] = engine
    return _engines[url]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> dt.datetime:
    """An ISO-8601 time; without a zone it is taken as UTC."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"time {text!r} is not ISO-8601 (e.g. 2026-11-25T14:30:00Z)") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


class AliasHistory:
    """The history of one registered model; ``call`` runs each database operation with the
    registry's bounded retry (``RegistryClient.call``)."""

    def __init__(self, url: str, model: str, call: Callable | None = None) -> None:
        self.url, self.model = url, model
        self._call = call or (lambda _op, fn, *a: fn(*a))

    def _run(self, operation: str, fn: Callable[[sa.Connection], object]):
        def once():
            with _engine(self.url).begin() as conn:  # one transaction
                return fn(conn)

        return self._call(f"alias history: {operation}", once)

    def begin(
        self,
        moves: Sequence[AliasMove],
        actor: str,
        kind: str,
        reason: str,
        evidence: dict | None = None,
    ) -> str | None:
        """Record ``moves`` as pending; returns the move id (``None`` when nothing moves)."""
        moves = [m for m in moves if m.from_version != m.to_version]
        if not moves:
            return None
        move, at, payload = uuid.uuid4().hex, _now(), json.dumps(evidence or {}, default=str)
        rows = [
            {
                "model": self.model,
                "move": move,
                "alias": m.alias,
                "from_version": m.from_version,
                "to_version": m.to_version,
                "at": at,
                "actor": actor[:512],
                "kind": kind,
                "reason": reason,
                "evidence": payload,
                "status": PENDING,
            }
            for m in moves
        ]
        self._run("begin", lambda conn: conn.execute(_table.insert(), rows))
        return move

    def complete(self, move: str | None) -> None:
        if move is not None:
            self._run("complete", lambda conn: conn.execute(self._set(DONE, _table.c.move == move)))

    def reconcile(self, aliases: dict[str, str]) -> int:
        """Settle pending rows against the aliases as they are; call under the promotion lock."""

        def settle(conn: sa.Connection) -> int:
            pending = conn.execute(
                sa.select(_table.c.id, _table.c.alias, _table.c.to_version).where(
                    _table.c.model == self.model, _table.c.status == PENDING
                )
            ).all()
            for row in pending:
                status = DONE if aliases.get(row.alias) == row.to_version else ABORTED
                conn.execute(self._set(status, _table.c.id == row.id))
            return len(pending)

        return self._run("reconcile", settle)

    def _set(self, status: str, where) -> sa.Update:
        return (
            _table.update()
            .where(where, _table.c.model == self.model, _table.c.status == PENDING)
            .values(status=status)
        )

    def entries(self, alias: str | None = None) -> list[HistoryEntry]:
        """Every recorded move of this model, oldest first."""
        query = sa.select(_table).where(_table.c.model == self.model).order_by(_table.c.id)
        if alias is not None:
            query = query.where(_table.c.alias == alias)
        rows = self._run("read", lambda conn: conn.execute(query).mappings().all())
        return [
            HistoryEntry(
                **{k: row[k] for k in HistoryEntry.__dataclass_fields__ if k != "evidence"},
                evidence=json.loads(row["evidence"] or "{}"),
            )
            for row in rows
        ]

    def holder_at(self, when: dt.datetime, alias: str) -> HistoryEntry | None:
        """The completed move that put ``alias`` where it was at ``when`` (``None``: unset)."""
        holder = None
        for entry in self.entries(alias):
            if entry.status == DONE and parse_time(entry.at) <= when:
                holder = entry
        return holder


def markdown(entries: Sequence[HistoryEntry], limit: int = 15) -> str:
    """The newest ``limit`` moves as a table, newest first (for Dagster metadata)."""
    rows = [
        "| at | alias | from | to | kind | by | reason | status |",
        "| --- | --- | ---: | ---: | --- | --- | --- | --- |",
    ]
    for e in list(entries)[::-1][:limit]:
        reason = e.reason.replace("|", "/").replace("\n", " ")[:160]
        rows.append(
            f"| {e.at} | {e.alias} | {e.from_version or '-'} | {e.to_version} | {e.kind} "
            f"| {e.actor} | {reason} | {e.status} |"
        )
    return "\n".join(rows)
