"""Fixtures for the UI tests: a tmp MLOPS_HOME after one `train_and_deploy` run, the Dagster
webserver and daemon and the MLflow server on it, and headless Chromium driven over the
DevTools protocol.

The Dagster side runs as a deployment does: ``dagster-webserver`` and ``dagster-daemon run``
on the same ``DAGSTER_HOME`` and workspace, so sensors and schedules are live while the UI is
checked, and the daemon must report healthy (through the webserver's GraphQL) before a test
starts. Each server runs in its own process group, stopped as a whole, so the code servers
they spawn do not outlive the test.

Chromium is driven over CDP (``websockets``) rather than ``--dump-dom``: the Dagster UI lays
out its asset graph in a web worker, which a virtual-time budget does not wait for, so the
test polls the rendered page text in real time until the expected elements appear.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "ui"
# No network beyond loopback here: every flag that makes Chromium phone home is off.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it dies or stalls."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url} server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not ready after {timeout_s} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session`` and every process it spawned."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # code servers still shutting down, or a hung leader
    proc.wait(timeout=5)


def serve(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a server from the repo root in its own process group, output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class Servers:
    home: Path
    dagster_url: str
    mlflow_url: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Run the main job once as a new user would, then serve both UIs on that home."""
    home = tmp_path_factory.mktemp("ui") / "mlops"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        **os.environ,
        "MLOPS_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "HF_HUB_OFFLINE": "1",
        # the daemon's partner_health_sensor reacts within seconds to the outage test
        "MLOPS_PARTNER_SENSOR_INTERVAL_S": "3",
    }
    procs: list[subprocess.Popen] = []
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ingestion.sample",
                "--landing",
                str(home / "landing"),
                "--defects",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        job = subprocess.run(
            [str(BIN / "dagster"), "job", "execute", "-m", "orchestration.definitions"]
            + ["-j", "train_and_deploy"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]

        dagster_port, mlflow_port = free_port(), free_port()
        dagster_log, mlflow_log = home / "dagster-webserver.log", home / "mlflow-server.log"
        daemon_log = home / "dagster-daemon.log"
        webserver = serve(
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml"]
            + ["-h", "127.0.0.1", "-p", str(dagster_port)],
            dagster_log,
            env,
        )
        procs.append(webserver)
        daemon = serve(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], daemon_log, env
        )
        procs.append(daemon)
        mlflow = serve(
            [str(BIN / "mlflow"), "server", "--backend-store-uri"]
            + [f"sqlite:///{home}/mlflow/mlflow.db", "--host", "127.0.0.1"]
            + ["--port", str(mlflow_port)],
            mlflow_log,
            env,
        )
        procs.append(mlflow)
        dagster_url, mlflow_url = (
            f"http://127.0.0.1:{dagster_port}",
            f"http://127.0.0.1:{mlflow_port}",
        )
        wait_http(f"{dagster_url}/server_info", webserver, dagster_log)
        wait_http(f"{mlflow_url}/health", mlflow, mlflow_log)
        wait_dagster_location(dagster_url, webserver, dagster_log)
        wait_daemons_healthy(dagster_url, daemon, daemon_log)
        yield Servers(home=home, dagster_url=dagster_url, mlflow_url=mlflow_url)
    finally:
        for proc in procs:
            stop_group(proc)
        # The main job leaves the serving stack (gateway + engine) running.
        subprocess.run(
            [sys.executable, "-m", "serving", "--home", str(home), "down"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
        )


def wait_dagster_location(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120):
    """GraphQL as a readiness probe only: wait until the code location has loaded."""
    query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster-webserver exited:\n{log.read_text()[-4000:]}")
        try:
            body = httpx.post(f"{url}/graphql", json={"query": query}, timeout=5).json()
            entries = body["data"]["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"code location not loaded after {timeout_s} s:\n{log.read_text()[-4000:]}")


DAEMON_HEALTH = (
    "{ instance { daemonHealth { allDaemonStatuses"
    " { daemonType required healthy lastHeartbeatErrors { message } } } } }"
)


def daemon_statuses(url: str) -> list[dict]:
    """Every daemon the instance knows, as the webserver reports it to the UI."""
    body = httpx.post(f"{url}/graphql", json={"query": DAEMON_HEALTH}, timeout=10).json()
    return body["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]


def wait_daemons_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120):
    """Wait until every required daemon has sent a heartbeat the webserver calls healthy."""
    deadline = time.monotonic() + timeout_s
    statuses: list[dict] = []
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster-daemon exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError, KeyError, TypeError, ValueError):
            statuses = daemon_statuses(url)
            if statuses and all(d["healthy"] for d in statuses if d["required"]):
                return
        time.sleep(1)
    pytest.fail(f"daemons not healthy after {timeout_s} s: {statuses}\n{log.read_text()[-4000:]}")


class Browser:
    """One headless Chromium page driven over the DevTools protocol."""

    def __init__(self, ws: ClientConnection, session: str | None) -> None:
        self._ws, self._session, self._ids = ws, session, itertools.count(1)

    @classmethod
    def attach(cls, ws: ClientConnection) -> Browser:
        """Open a new tab on the browser endpoint and attach to it (flat sessions)."""
        browser = cls(ws, session=None)
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)
        page = cls(ws, session=session["sessionId"])
        page.call("Page.enable")
        return page

    def call(self, method: str, timeout_s: float = 30, **params) -> dict:
        msg_id = next(self._ids)
        payload = {"id": msg_id, "method": method, "params": params}
        if self._session:
            payload["sessionId"] = self._session
        self._ws.send(json.dumps(payload))
        deadline = time.monotonic() + timeout_s
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method} failed: {reply['error']}")
                return reply["result"]

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        result = self.call(
            "Runtime.evaluate", expression="document.body ? document.body.innerText : ''"
        )
        # Non-breaking spaces (chips, labels) read as plain spaces, as a reader sees them.
        return result["result"].get("value", "").replace("\xa0", " ")

    def wait_for_text(self, *needles: str, timeout_s: float = 60) -> str:
        """Poll the rendered text until every needle shows; fail naming the missing ones."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                pytest.fail(f"page never showed {missing} in {timeout_s} s; text:\n{text[:3000]}")
            time.sleep(0.5)

    def wait_for_text_or_none(self, needle: str, timeout_s: float) -> str | None:
        """The page text once ``needle`` shows, or None if it does not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            time.sleep(0.5)
        return None

    def wait_for_text_gone(self, needle: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while needle in self.text():
            if time.monotonic() > deadline:
                pytest.fail(f"{needle!r} still on the page after {timeout_s} s")
            time.sleep(0.3)

    def click_button(self, label: str) -> bool:
        """Click the first button whose text is ``label``, as a user would; False if none."""
        script = (
            "(() => { const b = [...document.querySelectorAll('button')]"
            f".find(b => b.innerText.trim() === {json.dumps(label)});"
            " if (!b) return false; b.click(); return true; })()"
        )
        return bool(self.call("Runtime.evaluate", expression=script)["result"].get("value"))

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(data))
        return path


@contextlib.contextmanager
def open_browser() -> Iterator[Browser]:
    """Start headless Chromium on a fresh profile; yield its one page; always stop it."""
    # Chromium's helper processes may still be writing the profile as it stops.
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        log = Path(profile) / "chromium.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
                + ["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
                + ["about:blank"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            with connect(devtools_url(proc, Path(profile), log), max_size=None) as ws:
                yield Browser.attach(ws)
        finally:
            stop(proc)


def devtools_url(proc: subprocess.Popen, profile: Path, log: Path, timeout_s: float = 30) -> str:
    """Chromium writes its port and browser endpoint to DevToolsActivePort once it listens."""
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        lines = active.read_text().split() if active.exists() else []
        if len(lines) == 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.2)
    pytest.fail(f"Chromium did not open its DevTools endpoint:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: run `sudo bash scripts/ensure_chromium.sh` first")
    with open_browser() as page:
        yield page
