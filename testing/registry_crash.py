"""``python -m registry`` that SIGKILLs itself at a named step of a promotion or rollback.

The crash-recovery tests run this instead of ``python -m registry`` when they set
``MLOPS_REGISTRY_FAULT`` to a step name (``promote:after-previous-champion``,
``promote:after-champion``, ``rollback:after-tags``): the process dies there for real, with
the registry half-written, and the test checks what a later command makes of it. Only
this module reads the variable; the product takes the step hook as a parameter.

    MLOPS_REGISTRY_FAULT=promote:after-champion python -m testing.registry_crash promote --version 3
"""

from __future__ import annotations

import os
import signal
import sys

from registry.__main__ import main

FAULT_ENV = "MLOPS_REGISTRY_FAULT"


def crash_at(point: str):
    """A step hook that kills this process, as a power cut would, at step ``point``."""

    def at_step(step: str) -> None:
        if step == point:
            os.kill(os.getpid(), signal.SIGKILL)

    return at_step


if __name__ == "__main__":
    point = os.environ.get(FAULT_ENV)
    sys.exit(main(at_step=crash_at(point) if point else None))
