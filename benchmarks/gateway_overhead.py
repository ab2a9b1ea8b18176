"""Gateway overhead: latency added and throughput kept, against a fast local backend.

``python benchmarks/gateway_overhead.py`` starts a minimal OpenAI-shaped backend (a raw ASGI
app answering a fixed completion) and ``python -m serving.gateway`` routing ``sovereign-lm``
to it, then measures, direct and through the gateway in the same run:

* latency at 1 client: p50 and p99 added by the gateway (targets: p50 <= 1 ms, p99 <= 5 ms);
* throughput at 32 and 64 concurrent clients: gateway / direct (target >= 0.8), direct
  and gateway runs interleaved, best of 2 each.

``--tracing`` starts a second gateway with traces exported (``OTEL_EXPORTER_OTLP_ENDPOINT``
pointing at a local OTLP/HTTP receiver that counts and discards what it gets) and measures
it beside the untraced one in the same run: the cost of tracing every proxied request (or
the share the standard ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` given to this
command select).

``--service-ms 10 --max-batch 32`` makes the backend engine-like (each request held 10 ms,
at most 32 in service at once, the rest queued): the ratio a user of a model server sees,
where the do-nothing backend measures the gateway's HTTP cost against uvicorn's C parser
alone.

The load generator is a hand-written keep-alive HTTP/1.1 client on asyncio, so the client's
own cost stays small next to what is measured. Everything shares this machine's cores: the
gateway competes with the backend and the client for CPU, which the ratio includes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BODY = json.dumps({"model": "sovereign-lm", "prompt": "Q: x A:", "max_tokens": 1}).encode()
ANSWER = json.dumps(
    {
        "id": "c",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "text": " 1", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
    }
).encode()


async def backend_app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(ANSWER)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


def receiver_app():
    """An OTLP/HTTP collector that accepts and discards; ``GET /count`` says how many export
    requests and bytes it got, so a run shows its spans really left the gateway."""
    got = {"requests": 0, "bytes": 0}

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            got["bytes"] += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = b""
        if scope["method"] == "POST":
            got["requests"] += 1
        else:
            body = json.dumps(got).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs ``BODY`` and reads the answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.request = (
            f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n"
            f"\r\n"
        ).encode() + BODY

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def post(self) -> int:
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await self.reader.readexactly(length)
        return int(head[9:12])

    def close(self) -> None:
        self.writer.close()


async def latencies(port: int, count: int) -> list[float]:
    conn = await Connection(port).open()
    out = []
    for _ in range(count):
        started = time.perf_counter()
        assert await conn.post() == 200
        out.append(time.perf_counter() - started)
    conn.close()
    return out


async def throughput(port: int, clients: int, seconds: float) -> float:
    conns = [await Connection(port).open() for _ in range(clients)]
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(conn: Connection) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            assert await conn.post() == 200
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return done / elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1e3


def wait_healthy(url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def engine_app(service_s: float, max_batch: int):
    """``backend_app`` holding each request ``service_s`` in one of ``max_batch`` slots, the
    way an engine serves a bounded batch; the rest queue."""
    slots: list[asyncio.Semaphore] = []

    async def app(scope, receive, send) -> None:
        if scope["type"] == "http":
            if not slots:
                slots.append(asyncio.Semaphore(max_batch))
            async with slots[0]:
                await asyncio.sleep(service_s)
        await backend_app(scope, receive, send)

    return app


def best_throughput(targets: dict[str, tuple[int, int | None]], clients: int, seconds: float):
    """Each target's req/s (and its process's CPU ms per request), interleaved, best of 2:
    the machine's other load drifts during a run."""
    best: dict[str, tuple[float, float | None]] = {}
    for _ in range(2):
        for name, (port, pid) in targets.items():
            cpu = cpu_seconds(pid) if pid else 0.0
            rate = asyncio.run(throughput(port, clients, seconds))
            used = (cpu_seconds(pid) - cpu) / (rate * seconds) * 1e3 if pid else None
            if rate > best.get(name, (0.0, None))[0]:
                best[name] = (rate, used)
    return best


def start_gateway(port: int, state: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "serving.gateway", "--port", str(port), "--state", state],
        cwd=REPO,
        env=env,
    )


def route_to(gateway: str, backend_port: int, token: str) -> None:
    """Route ``sovereign-lm`` on ``gateway`` to the backend, as the serving stack does."""
    wait_healthy(gateway)
    headers = {"Authorization": f"Bearer {token}"}
    httpx.put(
        f"{gateway}/admin/backends/fast",
        headers=headers,
        timeout=5,
        json={"url": f"http://127.0.0.1:{backend_port}", "timeout_s": 10},
    ).raise_for_status()
    httpx.put(
        f"{gateway}/admin/routes/sovereign-lm",
        headers=headers,
        timeout=5,
        json={"stable": "fast"},
    ).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-backend", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-receiver", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--latency-requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--service-ms",
        type=float,
        default=0.0,
        help="engine-like backend: hold each request this long (0: answer at once)",
    )
    parser.add_argument("--max-batch", type=int, default=32, help="with --service-ms")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also measure a gateway exporting traces to a local discarding OTLP receiver",
    )
    args = parser.parse_args()
    if args.service_ms < 0 or args.max_batch < 1:
        parser.error("--service-ms must be >= 0 and --max-batch >= 1")
    if args.serve_backend or args.serve_receiver:
        import uvicorn

        if args.serve_receiver:
            app, port = receiver_app(), args.serve_receiver
        else:
            app = (
                engine_app(args.service_ms / 1e3, args.max_batch)
                if args.service_ms
                else backend_app
            )
            port = args.serve_backend
        uvicorn.run(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=2048
        )
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    backend_port, gateway_port = free_port(), free_port()
    token = "bench-token"
    backend_args = ["--service-ms", str(args.service_ms), "--max-batch", str(args.max_batch)]
    if args.service_ms:
        cap = args.max_batch / args.service_ms * 1e3
        print(
            f"engine-like backend: {args.service_ms:g} ms per request, {args.max_batch} at a "
            f"time (cap {cap:,.0f} req/s)"
        )
    else:
        print("backend: raw ASGI app answering at once")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLOPS_GATEWAY_ADMIN_TOKEN": token, "PYTHONPATH": str(REPO)}
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            env.pop(name, None)  # the baseline gateway exports nothing
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--serve-backend", str(backend_port), *backend_args],
                env=env,
            ),
            start_gateway(gateway_port, f"{tmp}/state.json", env),
        ]
        ports = {"gateway": (gateway_port, procs[1].pid)}
        receiver = None
        if args.tracing:
            receiver_port, traced_port = free_port(), free_port()
            receiver = f"http://127.0.0.1:{receiver_port}"
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--serve-receiver", str(receiver_port)], env=env
                )
            )
            traced_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver}
            sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on")
            ratio = env.get("OTEL_TRACES_SAMPLER_ARG", "")
            print(f"traced gateway: OTEL_TRACES_SAMPLER={sampler} {ratio}".rstrip())
            procs.append(start_gateway(traced_port, f"{tmp}/traced.json", traced_env))
            ports["traced"] = (traced_port, procs[-1].pid)
        try:
            wait_healthy(f"http://127.0.0.1:{backend_port}")
            for port, _ in ports.values():
                route_to(f"http://127.0.0.1:{port}", backend_port, token)
            measure(args, backend_port, ports)
            if receiver is not None:
                time.sleep(6)  # the batch processor exports every 5 s
                got = httpx.get(f"{receiver}/count", timeout=5).json()
                print(
                    f"OTLP receiver got {got['requests']} export requests, "
                    f"{got['bytes'] / 1e6:.1f} MB"
                )
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)


def measure(args: argparse.Namespace, backend_port: int, ports: dict) -> None:
    """Latency at 1 client, then throughput at 32 and 64, direct vs each gateway."""
    asyncio.run(latencies(backend_port, 500))  # warm every path
    for port, _ in ports.values():
        asyncio.run(latencies(port, 500))
    direct = asyncio.run(latencies(backend_port, args.latency_requests))
    print(f"latency (1 client, {args.latency_requests} requests), ms:")
    print(f"  direct   p50 {pct(direct, 50):.3f}  p99 {pct(direct, 99):.3f}")
    for name, (port, _) in ports.items():
        via = asyncio.run(latencies(port, args.latency_requests))
        print(
            f"  {name:<8} p50 {pct(via, 50):.3f}  p99 {pct(via, 99):.3f}  added p50 "
            f"{pct(via, 50) - pct(direct, 50):.3f} (target <= 1)  p99 "
            f"{pct(via, 99) - pct(direct, 99):.3f} (target <= 5)"
        )
    targets = {"direct": (backend_port, None), **ports}
    for clients in (32, 64):
        best = best_throughput(targets, clients, args.seconds)
        d = best["direct"][0]
        for name in ports:
            rate, cpu_ms = best[name]
            print(
                f"throughput at {clients} clients (best of 2): {name} {rate:.0f} req/s, direct "
                f"{d:.0f} req/s, ratio {rate / d:.2f} (target >= 0.8); CPU {cpu_ms:.3f} ms "
                "per request"
            )
        if "traced" in best:
            print(
                f"  tracing on / off at {clients} clients: "
                f"{best['traced'][0] / best['gateway'][0]:.2f} of the throughput, "
                f"{best['traced'][1] / best['gateway'][1]:.2f}x the CPU per request"
            )


if __name__ == "__main__":
    main()
