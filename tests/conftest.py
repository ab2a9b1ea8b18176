"""Suite-wide policy: a run in which no test passed is a failed run.

pytest exits 5 when it collects nothing; this also catches a suite whose tests were all
skipped or deselected, which would otherwise exit 0 and look green.
"""

from __future__ import annotations

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter else 0
    if exitstatus == 0 and passed == 0:
        session.exitstatus = 1
