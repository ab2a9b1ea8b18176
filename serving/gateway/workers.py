"""Several gateway worker processes on one port: ``python -m serving.gateway --workers N``.

The parent binds the public socket once and hands it to every worker (``pass_fds``), so the
kernel spreads connections over workers that each run a full replica: their own tables,
breakers and partner health, the routing state shared through the state store. A pre-bound
socket rather than ``SO_REUSEPORT`` because it also works with port 0 and never leaves a
moment with no listener: the parent holds the socket while a worker restarts.

Each worker also listens on a private port of its own (``advertise_host``, port chosen by
the kernel) and registers that URL in the replica registry, so admin clients can read every
worker's ``/metrics``. The parent restarts a worker that exits (at most ``max_restarts`` in
``restart_window_s``, then it stops the others and exits 1) and passes SIGTERM/SIGINT on.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerPlan:
    host: str
    port: int
    workers: int
    child_argv: list[str]  # the gateway's own options; the socket's fd is appended
    max_restarts: int = 10
    restart_window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.workers < 2:
            raise ValueError(f"a worker plan needs workers >= 2, got {self.workers}")


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def run_workers(plan: WorkerPlan) -> int:
    sock = bind(plan.host, plan.port)
    fd = sock.fileno()
    command = [sys.executable, "-m", "serving.gateway", *plan.child_argv, "--listen-fd", str(fd)]
    stopping = False

    def start(index: int) -> subprocess.Popen:
        return subprocess.Popen([*command, "--worker-index", str(index)], pass_fds=(fd,))

    def on_signal(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    children = [start(i) for i in range(plan.workers)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    restarts: list[float] = []
    log.warning("gateway: %d workers on %s:%d", plan.workers, plan.host, plan.port)
    while not stopping:
        time.sleep(0.2)
        for index, child in enumerate(children):
            if stopping or child.poll() is None:
                continue
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < plan.restart_window_s] + [now]
            if len(restarts) > plan.max_restarts:
                log.error(
                    "gateway worker %d exited %s; %d restarts in %.0f s, giving up",
                    index,
                    child.returncode,
                    plan.max_restarts,
                    plan.restart_window_s,
                )
                on_signal(signal.SIGTERM, None)
                break
            log.warning("gateway worker %d exited %s; restarting", index, child.returncode)
            children[index] = start(index)
    for child in children:
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    sock.close()
    return 1 if len(restarts) > plan.max_restarts else 0
