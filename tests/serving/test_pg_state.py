"""Contract: the PostgreSQL gateway state store never loses a change between writers, reports
a corrupt or missing state row instead of serving it, repairs it on the next change, and
names an unreachable server (never its password) in a 503-typed error.

Runs against the server of ``MLOPS_TEST_PG_URL``, each test in its own table.
"""

from __future__ import annotations

import os
import threading
import uuid

import psycopg2
import pytest

from serving.gateway.pg_state import PostgresStateStore
from serving.gateway.state_store import StateUnavailable

pytestmark = pytest.mark.postgres
PG_URL = os.environ.get("MLOPS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def table():
    name = f"gw_test_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg2.connect(PG_URL, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}, {name}_replicas")
    conn.close()


def bump(data: dict) -> tuple[dict, int]:
    count = data.get("count", 0) + 1
    return {**data, "count": count}, count


def test_concurrent_updates_from_two_stores_lose_nothing(table):
    stores = [PostgresStateStore(PG_URL, table=table) for _ in range(2)]
    start = stores[0].read().version
    results: list[int] = []

    def writer(store: PostgresStateStore) -> None:
        for _ in range(40):
            results.append(store.update(bump, {})[1])

    threads = [threading.Thread(target=writer, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    final = stores[1].read()
    assert final.data["count"] == 80
    assert sorted(results) == list(range(1, 81))  # each write saw every earlier one
    assert final.version == start + 80
    for s in stores:
        s.close()


def test_watcher_is_woken_by_a_change_and_sees_the_new_version(table):
    writer, watcher = (
        PostgresStateStore(PG_URL, table=table),
        PostgresStateStore(PG_URL, table=table),
    )
    before = watcher.version()
    watcher.wait(0.01)  # LISTEN is in place from here on
    done = threading.Timer(0.2, lambda: writer.update(bump, {}))
    done.start()
    watcher.wait(5.0)
    done.join()
    assert watcher.version() == before + 1
    writer.close()
    watcher.close()


def test_corrupt_row_is_reported_and_the_next_change_repairs_it(table):
    store = PostgresStateStore(PG_URL, table=table)
    store.update(lambda d: ({"routes": {"a": 1}}, None), {})
    with psycopg2.connect(PG_URL) as conn, conn.cursor() as cur:
        cur.execute(f"UPDATE {table} SET data = '\"oops\"'::jsonb")
    conn.close()
    with pytest.raises(StateUnavailable, match="not an object"):
        store.read()
    snapshot, _ = store.update(bump, {"routes": {"kept": 1}})
    assert snapshot.data == {"routes": {"kept": 1}, "count": 1}
    assert store.read().data == snapshot.data
    store.close()


def test_deleted_row_is_reported_and_recreated_above_every_seen_version(table):
    store = PostgresStateStore(PG_URL, table=table)
    seen = store.update(bump, {})[0].version
    with psycopg2.connect(PG_URL) as conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM {table}")
    conn.close()
    with pytest.raises(StateUnavailable, match="row is missing"):
        store.read()
    snapshot, _ = store.update(bump, {"count": 5})
    assert snapshot.data == {"count": 6}
    assert snapshot.version > seen
    assert store.read() == snapshot
    store.close()


def test_unreachable_server_is_named_without_its_password(helpers):
    port = helpers.free_port()  # nothing listens there
    store = PostgresStateStore(f"postgresql://postgres:s3cret@127.0.0.1:{port}/x")
    with pytest.raises(StateUnavailable) as caught:
        store.update(bump, {})
    assert f"127.0.0.1:{port}" in caught.value.message and "unreachable" in caught.value.message
    assert "s3cret" not in caught.value.message
    assert caught.value.status_code == 503


def test_bad_table_name_is_refused():
    with pytest.raises(ValueError, match="state table 'x; drop'"):
        PostgresStateStore(PG_URL, table="x; drop")
