"""The local process supervisor: keeps the gateway and the engines of ``desired.json`` running.

It is a reconcile loop, the same contract a Kubernetes Deployment controller keeps:

| here                                   | Kubernetes                                       |
| -------------------------------------- | ------------------------------------------------ |
| ``desired.json`` entry per engine      | one Deployment (replicas: 1) per model version   |
| engine / gateway child process         | a Pod                                            |
| restart of an exited child, backoff    | ``restartPolicy: Always``, CrashLoopBackOff      |
| ``/health`` never 200 within startup   | ``startupProbe``                                 |
| ``/health`` failing after being ready  | ``livenessProbe`` (kill and restart)             |
| ``stack.json`` (urls, pids, healthy)   | Deployment/Pod status, Service endpoints         |
| fixed port per engine name             | a Service in front of the Pod                    |

Clients (``python -m serving up``, the canary's fleet) only edit ``desired.json`` under a file
lock and read ``stack.json``; they never own processes, so a crashed client leaves nothing
orphaned. A child keeps its port across restarts, so the gateway's backend URL stays valid.
Everything lives under ``$MLOPS_HOME/serving``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serving.engine.launcher import STARTUP_TIMEOUT_S, EngineSpec, kill_group, start_engine
from serving.gateway.state import StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackPaths:
    root: Path

    @classmethod
    def under(cls, mlops_home: Path) -> StackPaths:
        return cls(Path(mlops_home) / "serving")

    @property
    def desired(self) -> Path:
        return self.root / "desired.json"

    @property
    def stack(self) -> Path:
        return self.root / "stack.json"

    @property
    def pid(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def gateway_state(self) -> Path:
        return self.root / "gateway-state.json"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    @contextmanager
    def edit_desired(self) -> Iterator[dict]:
        """Read-modify-write ``desired.json`` under an exclusive lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "desired.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            desired = read_json(self.desired) or {"gateway": {}, "engines": {}}
            yield desired
            StateStore(self.desired).save(desired)

    def read_stack(self) -> dict:
        return read_json(self.stack) or {}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


@dataclass(frozen=True)
class SupervisorConfig:
    poll_s: float = 0.5
    #: ``None``: by engine kind (``launcher.STARTUP_TIMEOUT_S``; vLLM starts slowly).
    startup_timeout_s: float | None = None
    liveness_failures: int = 10  # consecutive failed probes of a ready child -> restart
    max_backoff_s: float = 10.0


@dataclass
class _Child:
    name: str
    spec: dict
    url: str
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    ready: bool = False
    failed_probes: int = 0
    restarts: int = 0
    next_start: float = 0.0


@dataclass
class Supervisor:
    paths: StackPaths
    config: SupervisorConfig = field(default_factory=SupervisorConfig)
    children: dict[str, _Child] = field(default_factory=dict)
    stopping: bool = False

    def run(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.paths.pid.write_text(str(os.getpid()))
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            while not self.stopping:
                self.reconcile(read_json(self.paths.desired) or {})
                time.sleep(self.config.poll_s)
        finally:
            for name in list(self.children):
                self._stop(name)
            self.paths.stack.unlink(missing_ok=True)
            self.paths.pid.unlink(missing_ok=True)

    def _on_signal(self, *_: object) -> None:
        self.stopping = True

    def reconcile(self, desired: dict) -> None:
        wanted = {f"engine:{n}": s for n, s in desired.get("engines", {}).items()}
        if desired.get("gateway"):
            wanted["gateway"] = desired["gateway"]
        for name in set(self.children) - set(wanted):
            self._stop(name)
        for name, spec in wanted.items():
            child = self.children.get(name)
            if child is None or child.spec != spec:
                if child is not None:
                    self._stop(name)
                child = self.children[name] = _Child(name, spec, self._url(spec))
            self._tend(child)
        self._write_stack()

    def _tend(self, child: _Child) -> None:
        now = time.monotonic()
        if child.process is None or child.process.poll() is not None:
            if child.process is not None:
                log.warning("%s exited with %s; restarting", child.name, child.process.returncode)
                kill_group(child.process)  # what it started (vLLM's engine core) goes too
                child.restarts += 1
                child.next_start = now + min(
                    0.25 * 2 ** min(child.restarts, 6), self.config.max_backoff_s
                )
                child.process = None
            if now >= child.next_start:
                self._start(child)
            return
        healthy = self._probe(child.url)
        if healthy:
            child.ready, child.failed_probes = True, 0
        elif child.ready:
            child.failed_probes += 1
            if child.failed_probes >= self.config.liveness_failures:
                log.warning(
                    "%s failed %d liveness probes; killing", child.name, child.failed_probes
                )
                self._kill(child)
        elif now - child.started_at > self._startup_timeout(child):
            log.warning(
                "%s not ready after %.0fs; killing", child.name, self._startup_timeout(child)
            )
            self._kill(child)

    def _startup_timeout(self, child: _Child) -> float:
        if self.config.startup_timeout_s is not None:
            return self.config.startup_timeout_s
        return STARTUP_TIMEOUT_S[child.spec.get("engine", "embedded")]

    def _start(self, child: _Child) -> None:
        spec = child.spec
        log_path = self.paths.log(child.name.replace(":", "-"))
        if child.name == "gateway":
            command = [
                sys.executable,
                "-m",
                "serving.gateway",
                "--host",
                spec["host"],
                "--port",
                str(spec["port"]),
                "--state",
                str(self.paths.gateway_state),
                "--workers",
                str(spec.get("workers", 1)),
            ]
            with log_path.open("ab") as out:
                child.process = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        else:
            child.process = start_engine(
                EngineSpec(
                    model_dir=Path(spec["model_dir"]),
                    served_model_name=spec["served_model_name"],
                    port=spec["port"],
                    host=spec.get("host", "127.0.0.1"),
                    engine=spec.get("engine", "embedded"),
                ),
                log_path,
            )
        child.started_at, child.ready, child.failed_probes = time.monotonic(), False, 0
        log.info("started %s pid %d", child.name, child.process.pid)

    def _kill(self, child: _Child) -> None:
        if child.process is not None:
            kill_group(child.process)  # the whole session: vLLM's engine core too
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(10)

    def _stop(self, name: str) -> None:
        child = self.children.pop(name)
        if child.process is not None and child.process.poll() is None:
            kill_group(child.process, signal.SIGTERM)
            kill_group(child.process, signal.SIGCONT)  # a stopped engine must see the TERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(15)  # vLLM shuts its engine core down first
        self._kill(child)
        log.info("stopped %s", name)

    @staticmethod
    def _url(spec: dict) -> str:
        return f"http://{spec.get('host', '127.0.0.1')}:{spec['port']}"

    @staticmethod
    def _probe(url: str) -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _write_stack(self) -> None:
        def view(child: _Child) -> dict:
            alive = child.process is not None and child.process.poll() is None
            return {
                "url": child.url,
                "pid": child.process.pid if alive else None,
                "healthy": alive and child.ready and child.failed_probes == 0,
                "restarts": child.restarts,
                **child.spec,
            }

        gateway = self.children.get("gateway")
        StateStore(self.paths.stack).save(
            {
                "supervisor_pid": os.getpid(),
                "updated_at": time.time(),
                "gateway": view(gateway) if gateway else None,
                "engines": {
                    n.split(":", 1)[1]: view(c)
                    for n, c in self.children.items()
                    if n.startswith("engine:")
                },
            }
        )
