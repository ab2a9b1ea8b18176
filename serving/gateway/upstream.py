"""A small keep-alive HTTP/1.1 client for the gateway's hot path to its backends.

The gateway sends one POST per proxied request to a handful of local engines. A general
client (``httpx2``: pure-Python parsing, a request/response object model, per-request
timeout and pool machinery) costs about half of the gateway's CPU per request; this one does
only what that path needs, on an :class:`asyncio.Protocol` with ``httptools`` (llhttp, the
parser uvicorn already uses) for the response:

* one pool per origin, last-used connection first, at most ``max_connections`` open;
* the request head and body go out in one ``write``; the response is parsed as bytes arrive
  (``Content-Length``, chunked, or until EOF), and a response the caller does not read fast
  enough pauses the socket instead of buffering without bound;
* timeouts are timer handles on the one future a caller waits on (no task per request):
  ``connect`` for opening a connection, ``timeout_s`` for the response head and between
  body chunks, as ``httpx``'s read timeout;
* a connection goes back to the pool only after its response was read to the end and
  neither side asked to close it. An idle connection the server closed is dropped when it
  is next checked out, and idle connections expire on the client first (``idle_timeout_s``,
  below uvicorn's 5 s keep-alive), so a request is not sent into a connection the server is
  closing. A pooled connection found closed at checkout is dropped and the request goes on
  a fresh one; a request is never re-sent once written, since the server may have
  processed it (a POST is not replayable: Go's ``net/http`` draws the same line), so that
  failure is reported instead.

Failures are two exception classes, as the proxy counts them: :class:`UpstreamTimeout` and
its base :class:`UpstreamError` (refused, reset, closed early, malformed).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httptools

_PAUSE_BYTES = 256 * 1024  # unread response bytes at which the socket stops being read
_RESUME_BYTES = 64 * 1024
_CONNECT_CAP_S = 2.0
_TARGET_CACHE = 1024


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange (refused, reset, malformed)."""


class UpstreamTimeout(UpstreamError):
    """Connecting to or hearing from the upstream took longer than allowed."""


def _expire(waiter: asyncio.Future, template: str, *args: object) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(template % args))


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; holds the state of the exchange in flight on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.alive = True
        self.idle_since = 0.0
        self.active = False
        self.waiter: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.head_done = self.complete = self.keep_alive = self.until_eof = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.error: UpstreamError | None = None

    def begin(self, payload: bytes) -> None:
        self._reset()
        self.active = True
        self.transport.write(payload)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:  # bytes nobody asked for: can't trust it
            self.alive = False
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed response from upstream: {exc}"))
            self.transport.close()

    def eof_received(self) -> bool:
        self.alive = False
        if self.active and self.head_done and self.until_eof and not self.complete:
            self.complete = True
            self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.active and not self.complete:
            reason = f": {exc}" if exc else ""
            self._fail(UpstreamError(f"upstream closed the connection mid-response{reason}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = True
        self.until_eof = (
            b"content-length" not in self.headers
            and b"transfer-encoding" not in self.headers
            and self.status not in (204, 304)
        )
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _PAUSE_BYTES and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # waiting
    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        """Until the next event on this connection, or :class:`UpstreamTimeout`."""
        if self.error is not None:
            raise self.error
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(
            timeout_s, _expire, waiter, "no data from upstream within %g s", timeout_s
        )
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < _RESUME_BYTES:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        return self.alive and self.keep_alive and not self.transport.is_closing()


class _Origin:
    """The connections to one ``scheme://host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        max_connections: int,
        idle_timeout_s: float,
    ) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.max_connections, self.idle_timeout_s = max_connections, idle_timeout_s
        self.idle: list[_Connection] = []
        self.open = 0
        self.waiters: deque[asyncio.Future] = deque()

    async def acquire(self, connect_s: float) -> _Connection:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            fresh = now - conn.idle_since < self.idle_timeout_s
            if fresh and conn.alive and not conn.transport.is_closing():
                return conn
            self.discard(conn)
        while self.open >= self.max_connections:
            await self._wait_for_slot(connect_s)
            if self.idle:
                return await self.acquire(connect_s)
        return await self._connect(connect_s)

    async def _wait_for_slot(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.waiters.append(waiter)
        message = "all %d connections to %s:%d stayed busy for %g s"
        args = (self.max_connections, self.host, self.port, timeout_s)
        timer = loop.call_later(timeout_s, _expire, waiter, message, *args)
        try:
            await waiter
        except BaseException:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            elif not waiter.cancelled() and waiter.exception() is None:
                self._notify()  # woken, then cancelled: pass the free slot on
            raise
        finally:
            timer.cancel()

    async def _connect(self, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        self.open += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                ),
                timeout_s,
            )
        except TimeoutError:
            self._closed_one()
            raise UpstreamTimeout(
                f"connecting to {self.host}:{self.port} took over {timeout_s:g} s"
            ) from None
        except OSError as exc:
            self._closed_one()
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        except BaseException:
            self._closed_one()
            raise
        return conn

    def release(self, conn: _Connection) -> None:
        conn.active = False
        if not conn.reusable():
            self.discard(conn)
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self._notify()

    def discard(self, conn: _Connection) -> None:
        conn.active = False
        conn.alive = False
        conn.transport.close()
        self._closed_one()

    def _closed_one(self) -> None:
        self.open -= 1
        self._notify()

    def _notify(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in self.idle:
            conn.alive = False
            conn.transport.close()
        self.open -= len(self.idle)
        self.idle.clear()


class UpstreamResponse:
    """A response whose head has arrived; the body is read with :meth:`read` or
    :meth:`iter_raw` (transfer-decoded bytes, as they come). Either returns the connection
    to the pool once the body has ended; :meth:`close` gives up on the rest of the body."""

    __slots__ = ("status", "_raw_headers", "_conn", "_origin", "_timeout_s", "_done", "on_done")

    def __init__(self, conn: _Connection, origin: _Origin, timeout_s: float) -> None:
        self.status = conn.status
        self._raw_headers = conn.headers  # the connection starts a new dict per exchange
        self._conn, self._origin, self._timeout_s = conn, origin, timeout_s
        self._done = False
        self.on_done: Callable[[], None] | None = None  # called once, when the body ends

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self._raw_headers.items()}

    @property
    def raw_content_type(self) -> bytes | None:
        """The ``Content-Type`` header as sent, ready to relay in an ASGI message."""
        return self._raw_headers.get(b"content-type")

    async def read(self) -> bytes:
        parts = [part async for part in self.iter_raw()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_raw(self) -> AsyncIterator[bytes]:
        conn = self._conn
        try:
            while True:
                while conn.chunks:
                    yield conn.take()
                if conn.complete:
                    break
                await conn.wait(self._timeout_s)
        except BaseException:
            self.close()
            raise
        self._finish()

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._origin.discard(self._conn)
            self._ended()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._origin.release(self._conn)
            self._ended()

    def _ended(self) -> None:
        if self.on_done is not None:
            self.on_done()


class UpstreamPool:
    """Keep-alive connections per origin; ``await pool.request(...)`` per upstream call."""

    def __init__(
        self,
        max_connections: int = 512,
        idle_timeout_s: float = 4.0,
        connect_timeout_s: float = _CONNECT_CAP_S,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._targets: dict[str, tuple[_Origin, bytes, bytes]] = {}
        self._tls: ssl.SSLContext | None = None

    async def request(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> UpstreamResponse:
        """Send one request and wait for the response head (not the body)."""
        origin, host, path = self._target(url)
        payload = self._head(method, host, path, len(body), headers) + body
        connect_s = min(timeout_s, self.connect_timeout_s)
        conn = await origin.acquire(connect_s)
        conn.begin(payload)
        try:
            while not conn.head_done:
                await conn.wait(timeout_s)
        except BaseException:
            origin.discard(conn)
            raise
        return UpstreamResponse(conn, origin, timeout_s)

    def open_connections(self) -> int:
        """Connections open or being opened, to all origins."""
        return sum(origin.open for origin in self._origins.values())

    async def aclose(self) -> None:
        for origin in self._origins.values():
            origin.close()
        self._origins.clear()
        self._targets.clear()

    @staticmethod
    def _head(
        method: str, host: bytes, path: bytes, length: int, headers: dict[str, str] | None
    ) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        return b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            method.encode("ascii"),
            path,
            host,
            length,
            extra.encode("latin-1"),
        )

    def _target(self, url: str) -> tuple[_Origin, bytes, bytes]:
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= _TARGET_CACHE:
                self._targets.clear()
            target = self._targets[url] = self._parse(url)
        return target

    def _parse(self, url: str) -> tuple[_Origin, bytes, bytes]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream url must be http(s)://host[:port]/path, got {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        key = (parts.scheme, parts.hostname, port)
        origin = self._origins.get(key)
        if origin is None:
            context = self._tls_context() if tls else None
            origin = self._origins[key] = _Origin(
                parts.hostname, port, context, self.max_connections, self.idle_timeout_s
            )
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]  # never forward credentials in Host
        return origin, host.encode("idna"), path.encode("ascii")

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls
