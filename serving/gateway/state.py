"""Durable gateway state: the routing table, partners and fallback routes as JSON, replaced
atomically.

Written to a temporary file in the same directory, fsynced, then ``os.replace``d over the
old one, so a crash at any moment leaves either the old or the new state, never a torn file.
A state file that does not parse is moved aside (``.corrupt-<time>``) and the gateway starts
empty rather than refusing to start; the log says so.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
            return data
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error(
                "gateway state %s unreadable (%s); moved to %s, starting empty",
                self.path,
                exc,
                aside,
            )
            return {}

    def save(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
