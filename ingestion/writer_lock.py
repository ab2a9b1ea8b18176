"""One corpus writer at a time: an advisory file lock beside the lake's tables.

The landing-zone ingest and the stream consumer both append to the corpus, and each decides
what is a duplicate from the record ids it read from the table; two writers interleaving could
both accept the same new record. Each holds this lock from reading the ids to its corpus
commit. ``flock`` is released by the kernel when its holder dies, so a killed writer never
leaves the lake locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".corpus-writer.lock"


@contextmanager
def corpus_writer(lake_dir: Path, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the lake's writer lock; wait at most ``timeout_s`` (for ever when None), then raise
    ``TimeoutError`` naming the lock."""
    lake_dir = Path(lake_dir)
    lake_dir.mkdir(parents=True, exist_ok=True)
    path = lake_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"another writer holds {path} (an ingest run?); retrying later"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
