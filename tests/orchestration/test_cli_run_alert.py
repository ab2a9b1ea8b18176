"""Contract: a run started with ``dagster job execute`` (the README's CI path, a run with no
code-location origin) that fails is alerted by ``run_failure_alerts`` under the real
``dagster-daemon``, exactly as a run launched from the UI would be.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _sensor_ticked(dagster_home: Path) -> bool:
    """True once the daemon has evaluated ``run_failure_alerts`` at least once: its first tick
    sets the cursor, so only failures after it are guaranteed to be seen."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for state in instance.all_instigator_state():
            if state.instigator_name == "run_failure_alerts":
                return bool(instance.get_ticks(state.instigator_origin_id, state.selector_id))
    return False


def _alerts(home: Path) -> list[dict]:
    path = home / "alerts" / "failures.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_failed_cli_run_is_alerted_by_the_daemon(tmp_path: Path, wait_until) -> None:
    home, dagster_home = tmp_path / "mlops", tmp_path / "mlops" / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, "MLOPS_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}
    env.pop("MLOPS_ALERT_WEBHOOK_URL", None)
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: daemon.poll() is not None or _sensor_ticked(dagster_home),
            "the daemon's first run_failure_alerts tick",
            timeout_s=180,
            detail=lambda: log.read_text()[-3000:],
        )
        assert daemon.poll() is None, log.read_text()[-3000:]
        # Nothing was ever ingested, so `ingest` fails for real at corpus_split.
        cli = subprocess.run(
            [str(BIN / "dagster"), "job", "execute", "-m", "orchestration.definitions"]
            + ["-j", "ingest"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert cli.returncode != 0, cli.stdout[-2000:] + cli.stderr[-2000:]
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            (run,) = instance.get_runs()
        assert run.job_name == "ingest" and run.status == dg.DagsterRunStatus.FAILURE
        assert run.remote_job_origin is None  # the case the sensor used to miss

        alerts = wait_until(
            lambda: [a for a in _alerts(home) if a["run_id"] == run.run_id],
            "an alert for the failed CLI run",
            timeout_s=120,
            detail=lambda: log.read_text()[-3000:],
        )
        assert alerts[0]["job_name"] == "ingest"
        assert alerts[0]["failed_steps"] == ["corpus_split"]
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
