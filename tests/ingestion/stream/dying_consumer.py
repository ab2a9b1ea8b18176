"""``python -m ingestion`` whose process dies (SIGKILL, as the kernel's OOM killer does) while
it handles a batch holding the record marked ``KILLS THE CONSUMER``. Test-only fault
injection: it patches the batch decoder of this process, then runs the real CLI."""

from __future__ import annotations

import os
import signal
import sys

from ingestion.stream import batch
from ingestion.stream.cli import main

MARKER = b"KILLS THE CONSUMER"
_decode = batch._decode


def _dying_decode(deliveries, rules, decoder):
    if any(MARKER in d.data for d in deliveries):
        os.kill(os.getpid(), signal.SIGKILL)
    return _decode(deliveries, rules, decoder)


if __name__ == "__main__":
    batch._decode = _dying_decode
    sys.exit(main(sys.argv[1:]))
