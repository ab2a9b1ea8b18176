"""Contract: the promotion lock admits one holder at a time across processes, times out with
PromotionLockTimeout, and is released when its holder is SIGKILLed (file lock and PostgreSQL
advisory lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from registry import PromotionLockTimeout
from registry.locking import registry_lock

REPO = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("MLOPS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

HOLDER = """
import sys, time
from registry.locking import registry_lock
with registry_lock(sys.argv[1], sys.argv[2], 30):
    print("held", flush=True)
    time.sleep(300)
"""


def hold_in_subprocess(lock_url: str, name: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, lock_url, name],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def check_exclusion_and_release(lock_url: str, per_model: bool) -> None:
    name = f"model-{uuid.uuid4().hex[:8]}"
    holder = hold_in_subprocess(lock_url, name)
    try:
        started = time.monotonic()
        with (
            pytest.raises(PromotionLockTimeout, match="held by another promotion"),
            registry_lock(lock_url, name, 0.5),
        ):
            pass
        assert time.monotonic() - started < 5
        if per_model:
            with registry_lock(lock_url, f"{name}-other", 0.5):
                pass  # another model's advisory key is independent
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    with registry_lock(lock_url, name, 5):
        pass  # the kernel / PostgreSQL released the dead holder's lock


def test_file_lock(tmp_path):
    check_exclusion_and_release(str(tmp_path / "promotion.lock"), per_model=False)


@pytest.mark.postgres
def test_postgres_advisory_lock():
    check_exclusion_and_release(PG_URL, per_model=True)


def test_rejects_empty_lock_url():
    with pytest.raises(ValueError, match="lock_url"):
        registry_lock("", "m", 1)
