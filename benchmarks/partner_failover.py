"""Partner failover: how fast ``auto`` stops sending traffic to a failing partner.

``python benchmarks/partner_failover.py`` starts a tiny random-weight engine as the
sovereign model, a fake Anthropic-style partner (``python -m testing.partners.fake``) and
the gateway (``python -m serving.gateway`` with its default partner health rules; active
probes every 1 s), all as subprocesses on loopback. An open-loop load sends 20 requests/s
to ``auto`` = [partner, sovereign-lm] and, as the baseline in the same run, 5 requests/s
straight to ``sovereign-lm``. Then, once per failure mode, at t0 the partner starts failing:

* ``500``: every answer is a 500;
* ``refused``: the partner process is killed (connection refused);
* ``hang``: connections are accepted, nothing is answered (the slowest to notice).

Figures per mode: failover time = t(last request the gateway sent to the partner) - t0,
read from the gateway's ``gateway_backend_requests_total{backend=partner}`` polled every
50 ms (target <= 2 s); failed client requests (target 0); latency of ``auto`` requests that
fell back (sent during the outage, answered by the sovereign model) vs direct
``sovereign-lm`` requests of the same window, p50 and p99. The partner is healed and the
gateway waits for it to be healthy again between modes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

from engine_batching import build_tiny_model  # noqa: E402

from serving.gateway.client import GatewayAdmin  # noqa: E402

TOKEN = "bench-token"
PARTNER_KEY = "bench-partner-key"
AUTO_RPS, DIRECT_RPS = 20.0, 5.0
OUTAGE_S = 6.0
MODES = ("500", "refused", "hang")


@dataclass
class Sample:
    route: str
    sent: float
    latency: float
    ok: bool
    partner: bool
    error: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up in {timeout_s}s")


class Processes:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.tmp / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO, env=self.env, stdout=log, stderr=log
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


class Partner:
    """The fake partner subprocess; ``kill`` and ``start`` model connection refused."""

    def __init__(self, procs: Processes) -> None:
        self.procs, self.port = procs, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = self.procs.start(
            "partner",
            "testing.partners.fake",
            "--kind",
            "anthropic",
            "--name",
            "claude",
            "--key",
            PARTNER_KEY,
            "--port",
            str(self.port),
        )
        wait_http(f"{self.url}/_control", self.proc)

    def mode(self, mode: str) -> None:
        httpx.post(f"{self.url}/_control", json={"mode": mode}, timeout=5).raise_for_status()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


class Load:
    """Open loop: requests leave on schedule whatever the answers' latency."""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=256)
        self.client = httpx.Client(
            timeout=60, limits=httpx.Limits(max_connections=256, max_keepalive_connections=256)
        )
        self.thread = threading.Thread(target=self._schedule, daemon=True)

    def _schedule(self) -> None:
        start, n_auto, n_direct = time.monotonic(), 0, 0
        while not self.stop.is_set():
            now = time.monotonic() - start
            if n_auto / AUTO_RPS <= now:
                self.pool.submit(self._one, "auto")
                n_auto += 1
            elif n_direct / DIRECT_RPS <= now:
                self.pool.submit(self._one, "sovereign-lm")
                n_direct += 1
            else:
                time.sleep(0.002)

    def _one(self, route: str) -> None:
        body = {"model": route, "messages": [{"role": "user", "content": "Q: 1 2 A:"}]}
        body["max_tokens"] = 2
        sent = time.monotonic()
        try:
            r = self.client.post(f"{self.gateway}/v1/chat/completions", json=body)
            latency = time.monotonic() - sent
            if r.status_code != 200:
                self.samples.append(Sample(route, sent, latency, False, False, str(r.status_code)))
                return
            text = r.json()["choices"][0]["message"]["content"] or ""
            self.samples.append(Sample(route, sent, latency, True, text.startswith("partner:")))
        except httpx.HTTPError as exc:
            self.samples.append(
                Sample(route, sent, time.monotonic() - sent, False, False, repr(exc))
            )

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pool.shutdown(wait=True)
        self.client.close()


def partner_attempts(gateway: str) -> float:
    text = httpx.get(f"{gateway}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('gateway_backend_requests_total{backend="claude",route="auto"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def watch_attempts(gateway: str, start_value: float, until: float) -> float | None:
    """Monotonic time of the last increase of the partner's attempt counter (from
    ``start_value``, read before the failure began) before ``until``; None if it never rose."""
    last_value, last_change = start_value, None
    while time.monotonic() < until:
        value = partner_attempts(gateway)
        if value != last_value:
            last_value, last_change = value, time.monotonic()
        time.sleep(0.05)
    return last_change


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def trial(mode: str, gateway: str, admin: GatewayAdmin, partner: Partner, load: Load) -> dict:
    before = partner_attempts(gateway)
    t0 = time.monotonic()
    if mode == "refused":
        partner.kill()
    else:
        partner.mode({"500": "error_500", "hang": "hang"}[mode])
    last = watch_attempts(gateway, before, t0 + OUTAGE_S)
    end = time.monotonic()
    if mode == "refused":
        partner.start()
    else:
        partner.mode("ok")
    window = [s for s in load.samples if t0 <= s.sent < end]
    fell_back = [s.latency for s in window if s.route == "auto" and s.ok and not s.partner]
    direct = [s.latency for s in window if s.route == "sovereign-lm" and s.ok]
    deadline = time.monotonic() + 120
    while admin.partners()["partners"]["claude"]["state"] != "healthy":
        if time.monotonic() > deadline:
            raise SystemExit("partner did not recover within 120 s")
        time.sleep(0.2)
    recovered = time.monotonic() - end
    time.sleep(2.0)  # traffic back on the partner before the next trial
    transitions = admin.partners()["partners"]["claude"]["transitions"]
    return {
        "mode": mode,
        "failover_s": (last - t0) if last is not None else 0.0,
        "failed": sum(not s.ok for s in window),
        "requests": len(window),
        "fell_back": fell_back,
        "direct": direct,
        "recovered_s": recovered,
        "reason": next(t["reason"] for t in reversed(transitions) if t["to"] != "healthy"),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model = build_tiny_model(tmp / "model", hidden=64, layers=2)
        env = {
            **os.environ,
            "MLOPS_HOME": str(tmp / "home"),
            "MLOPS_GATEWAY_ADMIN_TOKEN": TOKEN,
            "BENCH_PARTNER_KEY": PARTNER_KEY,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        procs = Processes(tmp, env)
        try:
            partner = Partner(procs)
            partner.start()
            config = {
                "partners": {
                    "claude": {
                        "kind": "anthropic",
                        "base_url": partner.url,
                        "model": "claude-bench",
                        "api_key_env": "BENCH_PARTNER_KEY",
                        "timeout_s": 30,
                        "probe_interval_s": 1.0,
                    }
                },
                "fallback_routes": {"auto": ["claude", "sovereign-lm"]},
            }
            (tmp / "config.yaml").write_text(json.dumps(config))
            engine_port, gateway_port = free_port(), free_port()
            engine = procs.start(
                "engine",
                *("serving.engine", "--model", str(model), "--served-model-name", "tiny"),
                *("--port", str(engine_port)),
            )
            gateway_proc = procs.start(
                "gateway",
                *("serving.gateway", "--config", str(tmp / "config.yaml")),
                *("--state", str(tmp / "state.json"), "--port", str(gateway_port)),
            )
            engine_url = f"http://127.0.0.1:{engine_port}"
            gateway = f"http://127.0.0.1:{gateway_port}"
            wait_http(f"{engine_url}/health", engine)
            wait_http(f"{gateway}/health", gateway_proc)
            admin = GatewayAdmin(gateway, TOKEN)
            admin.put_backend("engine", engine_url, model="tiny")
            admin.put_route("sovereign-lm", "engine")
            with Load(gateway) as load:
                time.sleep(3.0)  # warm-up: partner answering
                results = [trial(mode, gateway, admin, partner, load) for mode in MODES]
            total_failed = sum(not s.ok for s in load.samples)
            errors = sorted({s.error for s in load.samples if not s.ok})
        finally:
            procs.stop_all()
    report(results, len(load.samples), total_failed, errors)


def report(results: list[dict], total: int, failed: int, errors: list[str]) -> None:
    print(f"load: {AUTO_RPS:.0f} req/s to auto + {DIRECT_RPS:.0f} req/s to sovereign-lm, open loop")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(
        "| failure | failover time (target <= 2 s) | failed / requests in outage |"
        " fell back p50 / p99 | direct sovereign-lm p50 / p99 | added p50 / p99 | recovery |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        fb, direct = r["fell_back"], r["direct"]
        fb50, fb99 = quantile(fb, 0.5), quantile(fb, 0.99)
        d50, d99 = quantile(direct, 0.5), quantile(direct, 0.99)
        print(
            f"| {r['mode']} | {r['failover_s']:.2f} s | {r['failed']} / {r['requests']} |"
            f" {fb50 * 1000:.0f} / {fb99 * 1000:.0f} ms | {d50 * 1000:.0f} / {d99 * 1000:.0f} ms |"
            f" {(fb50 - d50) * 1000:+.0f} / {(fb99 - d99) * 1000:+.0f} ms |"
            f" {r['recovered_s']:.1f} s |"
        )
    print()
    for r in results:
        print(f"{r['mode']}: gateway's reason: {r['reason']}")
    print(f"client requests in the whole run: {total}, failed: {failed} {errors[:3]}")
    median = statistics.median(r["failover_s"] for r in results)
    print(f"median failover time: {median:.2f} s")


if __name__ == "__main__":
    main()
