"""Contract: deploy/dagster/dagster-postgres.yaml is a working Dagster instance on PostgreSQL.

The `ingest` job runs through the `dagster` CLI against a fresh database on the machine's
PostgreSQL, and the run and its materializations are found in that database.
"""

from __future__ import annotations

import os
import uuid

import psycopg2
import pytest

from ingestion.sample import write_landing

PG_HOST = os.environ.get("MLOPS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("MLOPS_TEST_PG_PORT", "5432")
PG_USER = os.environ.get("MLOPS_TEST_PG_USER", "postgres")


def _admin(statement: str) -> None:
    conn = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="test", connect_timeout=10
    )
    conn.autocommit = True  # CREATE / DROP DATABASE cannot run inside a transaction
    try:
        conn.cursor().execute(statement)
    finally:
        conn.close()


@pytest.fixture
def database():
    name = f"mlops_dagster_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_ingest_job_runs_on_postgres_instance(stack_factory, database: str) -> None:
    stack = stack_factory(
        "dagster-postgres.yaml",
        DAGSTER_PG_HOST=PG_HOST,
        DAGSTER_PG_PORT=PG_PORT,
        DAGSTER_PG_USER=PG_USER,
        DAGSTER_PG_PASSWORD="unused-under-trust-auth",
        DAGSTER_PG_DB=database,
    )
    write_landing(stack.landing, count=240, seed=3)

    result = stack.dagster("job", "execute", "-m", "orchestration.definitions", "-j", "ingest")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    conn = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database, connect_timeout=10
    )
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pipeline_name, status FROM runs")
        assert cur.fetchall() == [("ingest", "SUCCESS")]
        cur.execute(
            "SELECT asset_key FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        )
        materialized = {row[0] for row in cur.fetchall()}
        cur.execute(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_CHECK_EVALUATION'"
        )
        checks = cur.fetchone()[0]
    conn.close()
    assert {'["corpus"]', '["quarantine"]', '["corpus_split"]'} <= materialized
    assert checks >= 3
    # The run wrote to the embedded lake under MLOPS_HOME, not next to the instance.
    assert (stack.lake / "corpus" / "_delta_log").is_dir()
