"""``up`` / ``status`` / ``down`` of the local serving stack, and the engine fleet API.

``up`` writes the desired state (gateway + one engine for the champion's model dir), starts
the supervisor detached if it is not running, waits until both children are healthy, then
points route ``sovereign-lm`` at the engine through the gateway's admin API. It is safe to
re-run: a running stack is reused and the route re-pointed.

:class:`SupervisedFleet` is how the canary controller starts and stops engines: it edits
``desired.json`` and waits for the supervisor to report the result in ``stack.json``. Every
engine serves under the route's name, so the gateway forwards bodies unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from observability.retry import linear, retry_call
from serving.engine.launcher import STARTUP_TIMEOUT_S, EngineKind, EngineSpec, engine_command
from serving.gateway.client import AdminError, GatewayAdmin
from serving.supervisor import StackPaths

ROUTE = "sovereign-lm"
#: The gateway's port on one machine when ``--gateway-port`` is not given and it is free;
#: the port in use is remembered under ``$MLOPS_HOME/serving`` so URLs survive down / up.
DEFAULT_GATEWAY_PORT = 8100


class StackError(RuntimeError):
    """The stack could not be brought to the requested state; the message says what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now (connections of a stopped server still
    in TIME_WAIT do not count: servers bind with SO_REUSEADDR, as this check does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def gateway_port(paths: StackPaths, requested: int | None) -> int:
    """The port ``up`` gives the gateway: the one asked for, else the one this ``$MLOPS_HOME``
    used last, else :data:`DEFAULT_GATEWAY_PORT` (or any free port when that one is taken).
    The choice is written to ``serving/gateway-port`` so the printed URL stays valid."""
    remembered = paths.root / "gateway-port"
    port, source = requested, "--gateway-port"
    if port is None and remembered.is_file():
        port, source = int(remembered.read_text().strip() or 0) or None, str(remembered)
    if port is None:
        port = DEFAULT_GATEWAY_PORT if port_is_free(DEFAULT_GATEWAY_PORT) else free_port()
    elif not port_is_free(port):
        raise StackError(
            f"gateway port {port} (from {source}) is in use by another process; free it, "
            "or pass --gateway-port with another port"
        )
    paths.root.mkdir(parents=True, exist_ok=True)
    remembered.write_text(f"{port}\n")
    return port


def engine_name(model_dir: Path) -> str:
    """Stable name for the engine serving ``model_dir`` (one engine per model version)."""
    digest = hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:10]
    return f"engine-{digest}"


def admin_token(mlops_home: Path | None = None) -> str:
    """The gateway admin token: ``MLOPS_GATEWAY_ADMIN_TOKEN``, else the embedded default's.

    On one machine the token is generated once and kept, readable by its owner only, in
    ``$MLOPS_HOME/serving/admin-token``, so the local stack needs no set-up; the supervisor
    hands it to the gateway through the environment. A deployment sets the variable
    (from a Kubernetes Secret) and no file is written.
    """
    token = os.environ.get("MLOPS_GATEWAY_ADMIN_TOKEN")
    if token:
        return token
    if mlops_home is None:
        raise StackError("MLOPS_GATEWAY_ADMIN_TOKEN is not set; export a secret token first")
    path = Path(mlops_home) / "serving" / "admin-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(24))
    return path.read_text().strip()


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:  # a supervisor this process started and that has exited is a zombie until reaped
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: its parent reaps it
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def supervisor_pid(paths: StackPaths) -> int | None:
    try:
        pid = int(paths.pid.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _wait(predicate, timeout_s: float, what: str, paths: StackPaths) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack = paths.read_stack()
        if predicate(stack):
            return stack
        if supervisor_pid(paths) is None:
            raise StackError(
                f"supervisor exited while waiting for {what}; see {paths.log('supervisor')}"
            )
        time.sleep(0.2)
    raise StackError(
        f"timed out after {timeout_s:.0f}s waiting for {what}; see {paths.root / 'logs'}"
    )


@dataclass
class SupervisedFleet:
    """Engines run by the supervisor under ``paths``; names are stable per model dir."""

    paths: StackPaths
    engine: EngineKind = "embedded"
    route: str = ROUTE
    timeout_s: float | None = None  # None: by engine kind (STARTUP_TIMEOUT_S)

    def start(self, name: str, model_dir: Path) -> str:
        """Start (or reuse) engine ``name``; return its URL once healthy and warm."""
        spec = EngineSpec(Path(model_dir), self.route, port=1, engine=self.engine)
        engine_command(spec)  # fail here, with the install hint, if the engine is unavailable
        with self.paths.edit_desired() as desired:
            entry = desired["engines"].get(name) or {"port": free_port()}
            entry.update(
                model_dir=str(Path(model_dir).resolve()),
                engine=self.engine,
                served_model_name=self.route,
                host="127.0.0.1",
            )
            desired["engines"][name] = entry
        stack = _wait(
            lambda s: s.get("engines", {}).get(name, {}).get("healthy"),
            self.timeout_s or STARTUP_TIMEOUT_S[self.engine],
            f"engine {name}",
            self.paths,
        )
        url = stack["engines"][name]["url"]
        warm_up(url, self.route)
        return url

    def stop(self, name: str) -> None:
        with self.paths.edit_desired() as desired:
            desired["engines"].pop(name, None)
        _wait(
            lambda s: name not in s.get("engines", {}), 30.0, f"engine {name} to stop", self.paths
        )

    def pid(self, name: str) -> int | None:
        return self.paths.read_stack().get("engines", {}).get(name, {}).get("pid")


def warm_up(url: str, model: str, attempts: int = 3, timeout_s: float = 120.0) -> None:
    """One short completion, so an engine is routed to only once it has answered one.

    ``/health`` says the server is up; the first generation can still be slow (vLLM's
    first batch), and a user request must not pay for it.
    """
    body = {"model": model, "prompt": "Q: 1 A:", "max_tokens": 1, "temperature": 0}

    def complete() -> None:
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=timeout_s)
        if response.status_code != 200:
            raise StackError(f"answered {response.status_code}: {response.text[:200]}")

    try:
        retry_call(
            complete,
            attempts=attempts,
            delay_s=linear(0.5),
            retry_on=lambda exc: isinstance(exc, (httpx.HTTPError, StackError)),
        )
    except StackError as exc:
        problem = str(exc)
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    else:
        return
    raise StackError(f"engine at {url} is healthy but its warm-up completion failed: {problem}")


def up(
    mlops_home: Path,
    model_dir: Path,
    port: int | None = None,
    engine: EngineKind = "embedded",
    timeout_s: float | None = None,
    gateway_workers: int = 1,
) -> dict:
    if gateway_workers < 1:
        raise StackError(f"--gateway-workers must be >= 1, got {gateway_workers}")
    paths = StackPaths.under(mlops_home)
    token = admin_token(mlops_home)
    if not (Path(model_dir) / "config.json").is_file():
        raise StackError(f"--model {model_dir} is not a model directory (no config.json)")
    engine_command(EngineSpec(Path(model_dir), ROUTE, port=1, engine=engine))  # vLLM present?
    with paths.edit_desired() as desired:
        if not desired.get("gateway"):
            desired["gateway"] = {"host": "127.0.0.1", "port": gateway_port(paths, port)}
        desired["gateway"]["workers"] = gateway_workers
    if supervisor_pid(paths) is None:
        paths.log("supervisor").parent.mkdir(parents=True, exist_ok=True)
        with paths.log("supervisor").open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "serving", "--home", str(mlops_home), "supervise"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "MLOPS_GATEWAY_ADMIN_TOKEN": token},
            )
        deadline = time.monotonic() + 30
        while supervisor_pid(paths) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"supervisor did not start; see {paths.log('supervisor')}")
            time.sleep(0.1)
    fleet = SupervisedFleet(paths, engine, timeout_s=timeout_s)
    name = engine_name(model_dir)
    url = fleet.start(name, model_dir)
    stack = _wait(
        lambda s: (s.get("gateway") or {}).get("healthy"),
        timeout_s or STARTUP_TIMEOUT_S["embedded"],
        "the gateway",
        paths,
    )
    admin = GatewayAdmin(stack["gateway"]["url"], token)
    admin.put_backend(name, url)
    admin.put_route(ROUTE, name)
    for stale in set(admin.state()["backends"]) - {name}:
        admin.remove_backend(stale)
    with paths.edit_desired() as desired:  # engines of earlier runs are no longer routed to
        desired["engines"] = {name: desired["engines"][name]}
    _wait_routed_everywhere(admin, token, gateway_workers, name)
    return paths.read_stack()


def _wait_routed_everywhere(
    admin: GatewayAdmin, token: str, workers: int, backend: str, timeout_s: float = 30.0
) -> None:
    """Returns once every gateway worker routes ``ROUTE`` to ``backend``: the route was
    written through one worker, and the others learn it from the shared state a moment
    later, so a request sent right after ``up`` could otherwise reach one that has not."""
    deadline = time.monotonic() + timeout_s
    behind: list[str] = []
    while time.monotonic() < deadline:
        try:
            urls = [r["url"] for r in admin.replicas()] or [admin.url]
            behind = [
                url
                for url in urls
                if (GatewayAdmin(url, token).state()["routes"].get(ROUTE) or {}).get("stable")
                != backend
            ]
        except (AdminError, httpx.HTTPError) as exc:
            behind = [str(exc)]
        else:
            if len(urls) >= workers and not behind:
                return
        time.sleep(0.1)
    raise StackError(
        f"gateway workers did not all route {ROUTE!r} to {backend} within {timeout_s:.0f} s"
        f" ({behind or 'too few workers registered'}); see {admin.url}/admin/replicas"
    )


def status(mlops_home: Path) -> dict:
    paths = StackPaths.under(mlops_home)
    pid = supervisor_pid(paths)
    stack = paths.read_stack() if pid else {}
    return {"running": pid is not None, "supervisor_pid": pid, **stack}


def down(mlops_home: Path, timeout_s: float = 30.0) -> bool:
    """Stop the supervisor and its children; ``False`` if nothing was running."""
    paths = StackPaths.under(mlops_home)
    pid = supervisor_pid(paths)
    stack = paths.read_stack()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    # a supervisor that was SIGKILLed leaves children behind: stop what stack.json lists
    children = [stack.get("gateway") or {}, *stack.get("engines", {}).values()]
    for child in children:
        if _alive(child.get("pid")):
            # each child leads its own session; vLLM's engine core is in it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child["pid"], signal.SIGTERM)
    paths.desired.unlink(missing_ok=True)
    paths.stack.unlink(missing_ok=True)
    return pid is not None
