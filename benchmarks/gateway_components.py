"""Where the gateway's CPU per proxied request goes, one component at a time.

``python benchmarks/gateway_components.py`` prints CPU microseconds per request for:

* upstream clients, in this process on uvloop, 32 concurrent requests against the raw
  ASGI backend of ``gateway_overhead.py`` in another process: ``httpx2`` used the way the
  proxy used it before it had its own client, ``aiohttp``'s client, and
  ``serving.gateway.upstream``;
* server stacks, in a uvicorn subprocess under the same 32-client load: a raw ASGI app on
  uvicorn with ``h11`` + asyncio, the same on ``httptools`` + uvloop (what uvicorn picks on
  its own when both are installed, so what the gateway runs), and the same stack with
  a Starlette ``Request`` / ``Response`` round trip in the app;
* the request-body JSON parse, timed in-process.

Client CPU includes the load loop's own share, the same for every client. Numbers are
per-process CPU time (user + system) divided by requests, so other load on the machine
slows the run but moves them less than throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import timeit
from collections.abc import Awaitable, Callable

import gateway_overhead as base

CLIENTS = 32
URL_PATH = "/v1/completions"
HEADERS = {"content-type": "application/json"}


async def _drive(call: Callable[[], Awaitable[None]], seconds: float) -> tuple[float, float]:
    """Run ``call`` from CLIENTS tasks for ``seconds``: (requests/s, CPU µs per request)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    for _ in range(200):
        await call()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(CLIENTS)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return done / wall, cpu / done * 1e6


async def bench_httpx2(url: str, seconds: float) -> tuple[float, float]:
    import httpx2

    limits = httpx2.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx2.AsyncClient(limits=limits, http2=False) as client:
        timeout = httpx2.Timeout(10.0, connect=2.0)

        async def call() -> None:
            request = client.build_request(
                "POST", url, content=base.BODY, headers=HEADERS, timeout=timeout
            )
            response = await client.send(request, stream=True)
            await response.aread()
            await response.aclose()
            assert response.status_code == 200

        return await _drive(call, seconds)


async def bench_aiohttp(url: str, seconds: float) -> tuple[float, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(sock_read=10.0, sock_connect=2.0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call() -> None:
            async with session.post(
                url, data=base.BODY, headers=HEADERS, timeout=timeout
            ) as response:
                await response.read()
                assert response.status == 200

        return await _drive(call, seconds)


async def bench_upstream(url: str, seconds: float) -> tuple[float, float]:
    from serving.gateway.upstream import UpstreamPool

    pool = UpstreamPool()

    async def call() -> None:
        response = await pool.request("POST", url, base.BODY, HEADERS, 10.0)
        await response.read()
        assert response.status == 200

    try:
        return await _drive(call, seconds)
    finally:
        await pool.aclose()


async def starlette_app(scope, receive, send) -> None:
    from starlette.requests import Request
    from starlette.responses import Response

    if scope["type"] != "http":
        return
    request = Request(scope, receive)
    request.headers.get("content-length")
    chunks = [chunk async for chunk in request.stream()]
    b"".join(chunks)
    await Response(base.ANSWER, media_type="application/json")(scope, receive, send)


SERVERS = {
    "raw ASGI, h11 + asyncio": ("raw", "h11", "asyncio"),
    "raw ASGI, httptools + uvloop (the gateway)": ("raw", "httptools", "uvloop"),
    "  same, no Server/Date headers": ("raw-bare", "httptools", "uvloop"),
    "Starlette Request/Response, httptools + uvloop": ("starlette", "httptools", "uvloop"),
}


def serve(app: str, http: str, loop: str, port: int) -> None:
    import uvicorn

    bare = app == "raw-bare"
    uvicorn.run(
        starlette_app if app == "starlette" else base.backend_app,
        host="127.0.0.1",
        port=port,
        http=http,
        loop=loop,
        log_level="warning",
        access_log=False,
        backlog=2048,
        server_header=not bare,
        date_header=not bare,
    )


def bench_server(app: str, http: str, loop: str, seconds: float) -> tuple[float, float]:
    port = base.free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", app, http, loop, str(port)],
    )
    try:
        base.wait_healthy(f"http://127.0.0.1:{port}")
        asyncio.run(base.latencies(port, 500))
        cpu = base.cpu_seconds(proc.pid)
        rate = asyncio.run(base.throughput(port, CLIENTS, seconds))
        return rate, (base.cpu_seconds(proc.pid) - cpu) / (rate * seconds) * 1e6
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--serve", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        app, http, loop, port = args.serve
        serve(app, http, loop, int(port))
        return

    import uvloop

    port = base.free_port()
    backend = subprocess.Popen(
        [sys.executable, base.__file__, "--serve-backend", str(port)],
    )
    try:
        url = f"http://127.0.0.1:{port}{URL_PATH}"
        base.wait_healthy(f"http://127.0.0.1:{port}")
        print(f"upstream client, {CLIENTS} concurrent requests, CPU per request in the client:")
        for name, bench in (
            ("httpx2 (the previous client)", bench_httpx2),
            ("aiohttp", bench_aiohttp),
            ("serving.gateway.upstream", bench_upstream),
        ):
            rate, us = uvloop.run(bench(url, args.seconds))
            print(f"  {name:28s} {us:7.1f} µs  ({rate:,.0f} req/s)")
    finally:
        backend.terminate()
        backend.wait(10)

    print(f"server stack, {CLIENTS} clients, CPU per request in the server process:")
    for name, (app, http, loop) in SERVERS.items():
        rate, us = bench_server(app, http, loop, args.seconds)
        print(f"  {name:48s} {us:7.1f} µs  ({rate:,.0f} req/s)")

    runs = 100_000
    parse = timeit.timeit(lambda: json.loads(base.BODY), number=runs) / runs * 1e6
    print(f"json.loads of the {len(base.BODY)}-byte request body: {parse:.1f} µs")


if __name__ == "__main__":
    main()
