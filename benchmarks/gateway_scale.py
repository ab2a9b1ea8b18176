"""Gateway scale-out: 1 and 2 workers against the bare backend, and change propagation over
PostgreSQL across 3 replicas.

``python benchmarks/gateway_scale.py`` measures in one run:

* latency at 1 client (p50/p99 added) and throughput at ``--clients`` concurrent clients
  (best of 2, interleaved) for the backend direct, the gateway with ``--workers 1`` and with
  ``--workers 2`` (state file), with the ratio of each to direct;
* change propagation: 3 replicas (``python -m serving.gateway --state-url``) on the
  PostgreSQL server of ``--pg-url`` (own table, dropped after); ``--changes`` weight changes
  through replica 0, each timed from the write until the *last* of the other two serves it
  (polled every 2 ms), p50 and p99; baseline: the write's own acknowledgement time.

The backend and load generator are those of ``gateway_overhead.py`` (``--service-ms`` makes
the backend engine-like). Everything shares this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg2
from gateway_overhead import REPO, best_throughput, free_port, latencies, pct, wait_healthy

TOKEN = "bench-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def gateway(port: int, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLOPS_GATEWAY_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "serving.gateway", "--port", str(port), *args], cwd=REPO, env=env
    )


def route(url: str, backend_port: int) -> None:
    body = {"url": f"http://127.0.0.1:{backend_port}", "timeout_s": 10}
    httpx.put(
        f"{url}/admin/backends/fast", headers=HEADERS, json=body, timeout=5
    ).raise_for_status()
    httpx.put(
        f"{url}/admin/routes/sovereign-lm", headers=HEADERS, json={"stable": "fast"}, timeout=5
    ).raise_for_status()


def workers_run(args, tmp: Path) -> None:
    backend_port = free_port()
    extra = ["--service-ms", str(args.service_ms), "--max-batch", "32"]
    script = str(REPO / "benchmarks" / "gateway_overhead.py")
    procs = [
        subprocess.Popen([sys.executable, script, "--serve-backend", str(backend_port), *extra])
    ]
    ports = {1: free_port(), 2: free_port()}
    for n, port in ports.items():
        procs.append(gateway(port, "--workers", str(n), "--state", str(tmp / f"w{n}.json")))
    try:
        wait_healthy(f"http://127.0.0.1:{backend_port}")
        for port in ports.values():
            wait_healthy(f"http://127.0.0.1:{port}")
            route(f"http://127.0.0.1:{port}", backend_port)
        time.sleep(1.0)  # both workers of the 2-worker gateway have adopted the route
        targets = {"direct": backend_port, **{f"{n} worker(s)": p for n, p in ports.items()}}
        for port in targets.values():
            asyncio.run(latencies(port, 300))  # warm every path and every worker
        lat = {
            name: asyncio.run(latencies(port, args.latency_requests))
            for name, port in targets.items()
        }
        print(f"latency, 1 client, {args.latency_requests} requests (ms):")
        for name, values in lat.items():
            added = (
                ""
                if name == "direct"
                else (
                    f"  added p50 {pct(values, 50) - pct(lat['direct'], 50):+.3f}"
                    f" p99 {pct(values, 99) - pct(lat['direct'], 99):+.3f}"
                )
            )
            print(f"  {name:12s} p50 {pct(values, 50):.3f}  p99 {pct(values, 99):.3f}{added}")
        best = best_throughput(
            {n: (p, None) for n, p in targets.items()}, args.clients, args.seconds
        )
        direct = best["direct"][0]
        print(f"throughput, {args.clients} clients, best of 2 x {args.seconds:g} s (req/s):")
        for name, (rate, _) in best.items():
            print(f"  {name:12s} {rate:8.0f}  ratio to direct {rate / direct:.2f}")
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)


def weight_on(url: str) -> float | None:
    try:
        state = httpx.get(f"{url}/admin/state", headers=HEADERS, timeout=2).json()
    except httpx.HTTPError:
        return None
    return (state["routes"].get("sovereign-lm") or {}).get("canary_weight")


def propagation_run(args, tmp: Path) -> None:
    table = f"gw_bench_{uuid.uuid4().hex[:8]}"
    ports = [free_port() for _ in range(3)]
    backend_port = free_port()
    script = str(REPO / "benchmarks" / "gateway_overhead.py")
    procs = [subprocess.Popen([sys.executable, script, "--serve-backend", str(backend_port)])]
    common = ["--state-url", args.pg_url, "--state-table", table]
    procs += [gateway(p, *common, "--state", str(tmp / f"r{p}.json")) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url in urls:
            wait_healthy(url)
        route(urls[0], backend_port)
        httpx.put(
            f"{urls[0]}/admin/routes/sovereign-lm",
            headers=HEADERS,
            json={"stable": "fast", "canary": "fast", "canary_weight": 0},
            timeout=5,
        ).raise_for_status()
        time.sleep(1.0)
        acks, spread = [], []
        for i in range(args.changes):
            weight = float(1 + i % 99)
            started = time.perf_counter()
            httpx.post(
                f"{urls[0]}/admin/routes/sovereign-lm/weight",
                headers=HEADERS,
                json={"canary_weight": weight},
                timeout=5,
            ).raise_for_status()
            acks.append(time.perf_counter() - started)
            pending = list(urls[1:])
            while pending:
                pending = [u for u in pending if weight_on(u) != weight]
                assert time.perf_counter() - started < 10, f"change {i} never propagated"
                if pending:
                    time.sleep(0.002)
            spread.append(time.perf_counter() - started)
            time.sleep(0.05)
        q = lambda v, p: statistics.quantiles(v, n=100)[p - 1] * 1e3  # noqa: E731
        print(f"change propagation over PostgreSQL, 3 replicas, {args.changes} changes (ms):")
        print(f"  write acknowledged (baseline)  p50 {q(acks, 50):.1f}  p99 {q(acks, 99):.1f}")
        print(
            f"  in force on all 3              p50 {q(spread, 50):.1f}  p99 {q(spread, 99):.1f}"
            f"  (target p99 <= 1000)"
        )
        print(f"  ratio p50 {q(spread, 50) / q(acks, 50):.2f}")
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)
        with psycopg2.connect(args.pg_url, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}, {table}_replicas")
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument("--service-ms", type=float, default=0.0)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("MLOPS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        workers_run(args, Path(tmp))
        propagation_run(args, Path(tmp))


if __name__ == "__main__":
    main()
