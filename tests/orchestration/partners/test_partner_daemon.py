"""Contract: under the real ``dagster-daemon``, a partner outage fails ``auto`` over to the
sovereign model and the recovery gives it back, each as a run and a ``routing_state``
materialization, with no one calling anything by hand.

A real serving stack with one fake partner first in ``auto``; ``dagster-daemon run`` on the
repository's workspace with ``MLOPS_PARTNER_SENSOR_INTERVAL_S=2``. The partner answers 500s,
then recovers; the test only watches the gateway and the Dagster instance (bounded waits).
"""

import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from serving.stack import ROUTE

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))


def runs(instance: dg.DagsterInstance, job: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(job_name=job)))


def succeeded(instance: dg.DagsterInstance, job: str) -> dg.DagsterRun | None:
    done = [r for r in runs(instance, job) if r.status == dg.DagsterRunStatus.SUCCESS]
    return done[0] if done else None


def test_daemon_fails_over_on_outage_and_restores_on_recovery(
    stack, partner_world, wait_until
) -> None:
    world = partner_world(claude="anthropic")
    assert world.home == stack.home
    env = {**world.env, **stack.env, "MLOPS_PARTNER_SENSOR_INTERVAL_S": "2"}
    log = stack.home / "dagster-daemon.log"
    daemon_log = lambda: f"daemon log:\n{log.read_text()[-4000:]}"  # noqa: E731
    # the instance's storage is created here, before the daemon opens it too
    instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
    with log.open("w") as out:
        daemon = subprocess.Popen(
            [DAEMON, "run", "-w", "workspace.yaml"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        world.partners["claude"].set_mode("error_500")
        failover = wait_until(
            lambda: succeeded(instance, "failover_to_sovereign"),
            "the failover run",
            240,
            daemon_log,
        )
        route = world.view()["fallback_routes"]["auto"]
        assert route["pinned"] == ROUTE and "claude down" in route["pinned_reason"]
        assert failover.tags["dagster/sensor_name"] == "partner_health_sensor"

        world.partners["claude"].set_mode("ok")
        restore = wait_until(
            lambda: succeeded(instance, "restore_partners"), "the restore run", 240, daemon_log
        )
        assert world.view()["fallback_routes"]["auto"]["pinned"] is None
        assert restore.tags["dagster/sensor_name"] == "partner_health_sensor"
        assert len(runs(instance, "failover_to_sovereign")) == 1  # one outage, one failover

        history = instance.fetch_materializations(dg.AssetKey("routing_state"), limit=10)
        events = sorted(history.records, key=lambda r: r.timestamp)
        meta = [{k: v.value for k, v in r.asset_materialization.metadata.items()} for r in events]
        assert [m["action"] for m in meta] == ["failover", "restore"]
        assert meta[0]["pinned_target"] == ROUTE and meta[1]["pinned_target"] == "none"
        assert meta[0]["evidence"]["partners"]["claude"]["state"] in ("degraded", "down")
        assert meta[1]["evidence"]["partners"]["claude"]["state"] == "healthy"
    finally:
        instance.dispose()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
