"""Suite-wide policy: a run in which no test passed is a failed run; no test leaks its
MLflow store into the environment of the tests after it.

pytest exits 5 when it collects nothing; this also catches a suite whose tests were all
skipped or deselected, which would otherwise exit 0 and look green.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter else 0
    if exitstatus == 0 and passed == 0:
        session.exitstatus = 1


def _wait_until(
    check: Callable[[], object],
    what: str,
    timeout_s: float = 60.0,
    detail: Callable[[], str] | None = None,
    interval_s: float = 0.2,
):
    """Poll ``check`` until it returns something truthy, and return that; on timeout fail
    naming ``what`` (plus ``detail()``, e.g. the tail of a server log)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    extra = f"\n{detail()}" if detail is not None else ""
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}{extra}")


@pytest.fixture(scope="session")
def wait_until() -> Callable[..., object]:
    """Bounded polling for tests of real processes (a fixture: under importlib mode test
    modules cannot import conftest)."""
    return _wait_until


_MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _restore_mlflow_uris():
    """``mlflow.set_tracking_uri`` also exports the URI to ``os.environ``; a test that calls
    it would hand its store to every later test's subprocesses. Put both back after each test."""
    saved = {key: os.environ.get(key) for key in _MLFLOW_URI_VARS}
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
