"""Fixtures for running the code location the way users do: the `dagster` CLI in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))


@dataclass
class Stack:
    home: Path
    dagster_home: Path
    env: dict[str, str]

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    def dagster(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DAGSTER, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def execute_job(
        self, job: str, config: Path | None = None, timeout: float = 600
    ) -> tuple[subprocess.CompletedProcess[str], dg.DagsterRun]:
        """``dagster job execute`` of ``job`` (with a run config file), and the run it made."""
        extra = ["-c", str(config)] if config is not None else []
        proc = self.dagster(
            "job", "execute", "-m", "orchestration.definitions", "-j", job, *extra, timeout=timeout
        )
        with dg.DagsterInstance.from_config(str(self.dagster_home)) as instance:
            runs = instance.get_runs(dg.RunsFilter(job_name=job), limit=1)
        assert runs, f"no run recorded; CLI said:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc, runs[0]


def make_stack(tmp_path: Path, instance_yaml: str = "dagster.yaml", **extra_env: str) -> Stack:
    home = tmp_path / "mlops"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "dagster" / instance_yaml, dagster_home / "dagster.yaml")
    env = {
        **os.environ,
        "MLOPS_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "HF_HUB_OFFLINE": "1",
        **extra_env,
    }
    return Stack(home=home, dagster_home=dagster_home, env=env)


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return make_stack(tmp_path)


@pytest.fixture
def stack_factory(tmp_path: Path):
    def factory(instance_yaml: str = "dagster.yaml", **extra_env: str) -> Stack:
        return make_stack(tmp_path, instance_yaml, **extra_env)

    return factory
