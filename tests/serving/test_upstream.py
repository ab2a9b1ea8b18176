"""Contract: ``serving.gateway.upstream`` speaks HTTP/1.1 to real servers correctly.

Bodies framed by Content-Length, chunked transfer-encoding and end-of-connection arrive
whole; keep-alive connections are reused and ``Connection: close`` or a server closing an
idle connection never fails the next request; a hanging server times out, a refused port, a
cut response or a malformed one raise :class:`UpstreamError`, and the pool's connection cap
holds. Upstreams are uvicorn in a thread and raw asyncio servers scripted byte by byte.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from serving.gateway.upstream import UpstreamError, UpstreamPool, UpstreamTimeout

JSON = {"content-type": "application/json"}


async def asgi_app(scope, receive, send) -> None:
    """``/echo`` answers the request body; ``/stream`` sends three chunks, unframed."""
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"] == "/stream":
        start = {"type": "http.response.start", "status": 200, "headers": [(b"x-kind", b"sse")]}
        await send(start)
        for i in range(3):
            chunk = f"data: {i}\n\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    status = 500 if scope["path"] == "/fail" else 200
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def uvicorn_url(helpers):
    with helpers.ThreadServer(asgi_app) as server:
        yield server.url


def run(coro_fn: Callable[[UpstreamPool], Awaitable], **pool_args):
    async def main():
        pool = UpstreamPool(**pool_args)
        try:
            return await coro_fn(pool)
        finally:
            await pool.aclose()

    return asyncio.run(main())


class Scripted:
    """A raw asyncio server: for each request read, ``answer(n, writer)`` writes the reply."""

    def __init__(self, answer: Callable[[int, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self.closed = asyncio.Event()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                await self.answer(self.requests, writer)
                if writer.is_closing():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()


def response(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (head.encode(), len(body), body)


def test_content_length_body_and_keep_alive_reuse(uvicorn_url):
    async def go(pool: UpstreamPool):
        out = []
        for i in range(3):
            body = json.dumps({"n": i}).encode()
            r = await pool.request("POST", f"{uvicorn_url}/echo", body, JSON, 5.0)
            out.append((r.status, r.headers["content-type"], await r.read()))
        return out, pool.open_connections()

    out, open_connections = run(go)
    assert out == [(200, "application/json", json.dumps({"n": i}).encode()) for i in range(3)]
    assert open_connections == 1  # one connection served all three


def test_large_body_roundtrip(uvicorn_url):
    body = json.dumps({"prompt": "x" * 600_000}).encode()

    async def go(pool):
        r = await pool.request("POST", f"{uvicorn_url}/echo", body, JSON, 10.0)
        return await r.read()

    assert run(go) == body


def test_chunked_stream_arrives_in_order_and_connection_is_reused(uvicorn_url):
    async def go(pool):
        r = await pool.request("POST", f"{uvicorn_url}/stream", b"{}", JSON, 5.0)
        chunks = [c async for c in r.iter_raw()]
        again = await pool.request("POST", f"{uvicorn_url}/echo", b"{}", JSON, 5.0)
        return r.headers, chunks, await again.read(), pool.open_connections()

    headers, chunks, after, open_connections = run(go)
    assert headers["transfer-encoding"] == "chunked" and headers["x-kind"] == "sse"
    assert b"".join(chunks) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert after == b"{}" and open_connections == 1


def test_5xx_is_a_response_not_an_error(uvicorn_url):
    async def go(pool):
        r = await pool.request("POST", f"{uvicorn_url}/fail", b'{"a": 1}', JSON, 5.0)
        return r.status, await r.read()

    assert run(go) == (500, b'{"a": 1}')


def test_connection_close_header_opens_a_new_connection_next_time():
    async def answer(n, writer):
        writer.write(response(b"ok%d" % n, "Connection: close"))
        await writer.drain()
        writer.close()

    async def go(pool):
        server = Scripted(answer)
        async with server as url:
            bodies = []
            for _ in range(2):
                r = await pool.request("POST", f"{url}/x", b"{}", JSON, 5.0)
                bodies.append(await r.read())
            return bodies, server.connections

    assert run(go) == ([b"ok1", b"ok2"], 2)


def test_server_closing_an_idle_connection_is_not_a_failure():
    async def answer(n, writer):
        writer.write(response(b"ok"))
        await writer.drain()
        writer.close()  # keep-alive timeout: closes right after, without saying so

    async def go(pool):
        server = Scripted(answer)
        async with server as url:
            first = await (await pool.request("POST", f"{url}/x", b"{}", JSON, 5.0)).read()
            await asyncio.wait_for(server.closed.wait(), 5)
            await asyncio.sleep(0.05)  # let the FIN reach the client's event loop
            second = await (await pool.request("POST", f"{url}/x", b"{}", JSON, 5.0)).read()
            return first, second, server.connections

    assert run(go) == (b"ok", b"ok", 2)


def test_body_until_eof_without_framing():
    async def answer(n, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def go(pool):
        async with Scripted(answer) as url:
            r = await pool.request("POST", f"{url}/x", b"{}", JSON, 5.0)
            return await r.read()

    assert run(go) == b"all of it"


def test_hanging_server_times_out():
    async def answer(n, writer):
        await asyncio.sleep(30)

    async def go(pool):
        async with Scripted(answer) as url:
            with pytest.raises(UpstreamTimeout, match="within 0.3 s"):
                await pool.request("POST", f"{url}/x", b"{}", JSON, 0.3)

    run(go)


def test_stall_mid_body_times_out():
    async def answer(n, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(30)

    async def go(pool):
        async with Scripted(answer) as url:
            r = await pool.request("POST", f"{url}/x", b"{}", JSON, 0.3)
            with pytest.raises(UpstreamTimeout):
                await r.read()

    run(go)


def test_refused_is_a_connect_error_not_a_timeout(helpers):
    url = f"http://127.0.0.1:{helpers.free_port()}/x"

    async def go(pool):
        with pytest.raises(UpstreamError, match="cannot connect") as info:
            await pool.request("POST", url, b"{}", JSON, 5.0)
        assert not isinstance(info.value, UpstreamTimeout)
        return pool.open_connections()

    assert run(go) == 0  # the failed attempt does not hold a slot


def test_response_cut_short_is_an_error():
    async def answer(n, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    async def go(pool):
        async with Scripted(answer) as url:
            r = await pool.request("POST", f"{url}/x", b"{}", JSON, 5.0)
            with pytest.raises(UpstreamError, match="mid-response"):
                await r.read()

    run(go)


def test_stream_cut_short_is_an_error():
    async def answer(n, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.close()

    async def go(pool):
        async with Scripted(answer) as url:
            r = await pool.request("POST", f"{url}/x", b"{}", JSON, 5.0)
            got = []
            with pytest.raises(UpstreamError):
                async for chunk in r.iter_raw():
                    got.append(chunk)
            return got

    assert run(go) == [b"hello"]


def test_malformed_response_is_an_error():
    async def answer(n, writer):
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async def go(pool):
        async with Scripted(answer) as url:
            with pytest.raises(UpstreamError, match="malformed"):
                await pool.request("POST", f"{url}/x", b"{}", JSON, 5.0)

    run(go)


def test_connection_cap_queues_requests(uvicorn_url):
    async def go(pool):
        async def one(i):
            r = await pool.request("POST", f"{uvicorn_url}/echo", b"%d" % i, JSON, 5.0)
            return await r.read()

        bodies = await asyncio.gather(*(one(i) for i in range(20)))
        return bodies, pool.open_connections()

    bodies, open_connections = run(go, max_connections=2)
    assert bodies == [b"%d" % i for i in range(20)]
    assert open_connections <= 2


def test_closing_a_response_early_drops_its_connection(uvicorn_url):
    async def go(pool):
        r = await pool.request("POST", f"{uvicorn_url}/stream", b"{}", JSON, 5.0)
        r.close()
        again = await pool.request("POST", f"{uvicorn_url}/echo", b"ok", JSON, 5.0)
        return await again.read(), pool.open_connections()

    assert run(go) == (b"ok", 1)


@pytest.mark.parametrize("url", ["ftp://host/x", "not a url", "http:///nohost"])
def test_bad_url_is_rejected_with_the_url(url):
    async def go(pool):
        with pytest.raises(ValueError, match="upstream url must be"):
            await pool.request("POST", url, b"{}", JSON, 1.0)

    run(go)


def test_slow_reader_of_a_large_stream_gets_every_byte(uvicorn_url):
    body = b"y" * 2_000_000

    async def go(pool):
        r = await pool.request("POST", f"{uvicorn_url}/echo", body, JSON, 10.0)
        got = []
        async for chunk in r.iter_raw():
            got.append(chunk)
            await asyncio.sleep(0.001)  # slower than loopback: the socket gets paused
        return b"".join(got), pool.open_connections()

    assert run(go) == (body, 1)


def test_waiting_for_a_free_connection_times_out():
    async def answer(n, writer):
        await asyncio.sleep(2)

    async def go(pool):
        async with Scripted(answer) as url:
            first = asyncio.ensure_future(pool.request("POST", f"{url}/x", b"{}", JSON, 1.0))
            await asyncio.sleep(0.1)
            with pytest.raises(UpstreamTimeout, match="all 1 connections .* stayed busy"):
                await pool.request("POST", f"{url}/x", b"{}", JSON, 0.3)
            with pytest.raises(UpstreamTimeout):
                await first

    run(go, max_connections=1)


def test_idle_connections_expire_before_the_server_closes_them():
    async def answer(n, writer):
        writer.write(response(b"ok"))
        await writer.drain()

    async def go(pool):
        server = Scripted(answer)
        async with server as url:
            for _ in range(2):
                assert await (await pool.request("POST", f"{url}/x", b"{}", JSON, 5.0)).read()
                await asyncio.sleep(0.3)
            return server.connections, server.requests

    assert run(go, idle_timeout_s=0.2) == (2, 2)
