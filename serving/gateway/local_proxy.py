"""The local proxy: one request along a local route's attempt plan to the sovereign engines.

Kept lean on purpose (it is benchmarked). The body is forwarded byte-for-byte (unless the
backend needs a different model name) through :class:`~serving.gateway.upstream.UpstreamPool`,
keep-alive HTTP/1.1 connections parsed by ``httptools``, and answers go straight to ASGI
``send``.

Each backend has a concurrency limit: a backend with every slot taken is skipped, and a
local backend answering 429 (its queue is full) is passed over for the next attempt; when
no attempt could be sent for those reasons the client gets a fast 429 with ``Retry-After``.
Neither is a backend fault. A client that goes away while its request waits closes the
upstream connection, so the engine drops the request from its queue.

A connection error, timeout or 5xx counts against the backend's breaker and moves on to the
next attempt (the canary's failures are retried on stable); when every attempt answered 5xx
the last one is relayed, and when none could answer the client gets a 503 in the OpenAI
error shape. A stream is retried only before its first byte reaches the client; a client
that goes away mid-stream closes the upstream connection, so the engine stops generating.

It knows nothing of partners: the dispatcher (:mod:`serving.gateway.proxy`) calls
:meth:`LocalProxy.attempt_local` for a local route and for a fallback route's local entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.responses import Response, StreamingResponse

from observability.logs import REQUEST_ID_HEADER
from observability.tracing_http import http
from serving.disconnect import disconnected
from serving.errors import Overloaded, Unavailable
from serving.gateway import asgi_io
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.routing import Backend, Route, RoutingTable
from serving.gateway.upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout

#: A complete upstream answer: status, raw content type, body.
Answer = tuple[int, bytes | None, bytes]


@dataclass(slots=True)
class LocalOutcome:
    """What a local route's attempt plan produced: a complete ``answer``, or a ``stream``
    whose head is in (backend, upstream, start time), or neither; ``last`` is the last 5xx
    seen and ``previous`` the last backend tried (for retry metrics of a fallback route)."""

    answer: Answer | None
    stream: tuple[Backend, UpstreamResponse, float] | None
    last: Answer | None
    previous: str | None
    shed_retry_s: float | None = None  # set when a backend was full or answered 429

    def overloaded(self, label: str) -> Overloaded:
        return Overloaded(
            f"`{label}` is at capacity; retry after the Retry-After delay",
            self.shed_retry_s or 1.0,
            "model",
        )


class LocalProxy:
    """Forwards to the local backends of :class:`RoutingTable` routes."""

    def __init__(self, table: RoutingTable, metrics: GatewayMetrics, pool: UpstreamPool) -> None:
        self.table, self.metrics, self.pool = table, metrics, pool
        self.tracing = http(__name__)  # a do-nothing stand-in unless traces are exported

    async def attempt_local(
        self, label: str, route: Route, call: asgi_io.Call, previous: str | None
    ) -> LocalOutcome:
        """Try ``route``'s attempt plan; metrics are labelled with ``label`` (the name the
        client asked for: the route itself, or a fallback route through it). The request id
        goes to the engine, so its log lines can be joined with the gateway's."""
        last: Answer | None = None
        shed_retry_s: float | None = None
        headers = {"content-type": "application/json"}
        if call.request_id is not None:
            headers[REQUEST_ID_HEADER] = call.request_id
        payload = call.payload
        full: list[str] = []
        for backend in route.attempts(self.table.backends, full):
            if previous is not None:
                self.metrics.retry(label, previous, backend.name)
            previous = backend.name
            content = call.body
            model = backend.model or route.name
            if model != payload["model"]:
                content = json.dumps({**payload, "model": model}).encode()
            self.metrics.attempt(label, backend.name)
            started = time.perf_counter()
            try:
                with self.tracing.client(backend.name, headers) as span:  # sets `traceparent`
                    upstream = await self.pool.request(
                        "POST", backend.url + call.path, content, headers, backend.timeout_s
                    )
                    span.response(upstream.status)
            except UpstreamTimeout:
                backend.slots.release()
                self._failed(label, backend, "timeout")
                continue
            except UpstreamError:
                backend.slots.release()
                self._failed(label, backend, "connect")
                continue
            except BaseException:  # cancelled: the client went away
                backend.slots.release()
                raise
            upstream.on_done = backend.slots.release  # when the body ends or is abandoned
            status, content_type = upstream.status, upstream.raw_content_type
            if status >= 500:
                with contextlib.suppress(UpstreamError):  # a 5xx whose body broke: no `last`
                    last = (status, content_type, await upstream.read())
                self._failed(label, backend, "status_5xx")
                continue
            if status == 429:  # the backend sheds load: not its fault, try the next one
                with contextlib.suppress(UpstreamError):  # read to keep the connection
                    await upstream.read()
                retry = _retry_after(upstream.headers.get("retry-after"))
                shed_retry_s = max(shed_retry_s or 0.0, retry)
                self.metrics.shed(label, backend.name, "backend_429")
                continue
            if call.stream and status == 200:
                return LocalOutcome(None, (backend, upstream, started), last, previous)
            try:
                data = await upstream.read()
            except UpstreamError:
                self._failed(label, backend, "read")
                continue
            backend.breaker.success()
            self.metrics.latency(label, backend.name, time.perf_counter() - started)
            return LocalOutcome((status, content_type, data), None, last, previous)
        for name in full:
            self.metrics.shed(label, name, "concurrency")
        if full and last is None:
            shed_retry_s = max(shed_retry_s or 0.0, 1.0)
        return LocalOutcome(None, None, last, previous, shed_retry_s)

    async def send_outcome(self, receive, send, name: str, outcome: LocalOutcome) -> None:
        """Answer the client of local route ``name`` with ``outcome``: the stream, the
        answer (or the last 5xx), a 429 when the backends shed it, else a 503."""
        if outcome.stream is not None:
            self.metrics.response(name, 200)
            await self._stream(receive, send, name, *outcome.stream)
            return
        answer = outcome.answer or outcome.last
        if answer is not None:
            self.metrics.response(name, answer[0])
            await asgi_io.respond(send, *answer, asgi_io.request_id())
            return
        if outcome.shed_retry_s is not None:
            self.metrics.response(name, 429)
            raise outcome.overloaded(name)
        self.metrics.response(name, 503)
        raise Unavailable(
            f"no healthy backend for `{name}`; retry shortly", "model", "backend_unavailable"
        )

    def as_response(self, label: str, outcome: LocalOutcome) -> Response | None:
        """The outcome as a Starlette response (for a fallback route), or None."""
        if outcome.stream is not None:
            backend, upstream, started = outcome.stream
            media_type = asgi_io.media(upstream.raw_content_type)
            relay = self.relay(label, backend, upstream, started)
            return StreamingResponse(relay, media_type=media_type)
        if outcome.answer is not None:
            status, content_type, data = outcome.answer
            return Response(data, status, media_type=asgi_io.media(content_type))
        return None

    async def relay(
        self, route: str, backend: Backend, upstream: UpstreamResponse, started: float
    ) -> AsyncIterator[bytes]:
        """The stream's bytes as they come; the attempt's outcome is recorded at the end."""
        try:
            async for chunk in upstream.iter_raw():
                yield chunk
        except UpstreamError:
            self._failed(route, backend, "stream")
            return
        finally:
            upstream.close()  # a no-op once the body has ended and the connection went back
        backend.breaker.success()
        self.metrics.latency(route, backend.name, time.perf_counter() - started)

    async def _stream(
        self, receive, send, route: str, backend: Backend, upstream: UpstreamResponse, started
    ) -> None:
        """Relay the stream while watching for the client leaving, which ends the relay."""
        relay = asyncio.ensure_future(self._send_stream(send, route, backend, upstream, started))
        gone = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not relay.done():
                relay.cancel()
                upstream.close()
        if relay.done() and not relay.cancelled():
            relay.result()

    async def _send_stream(
        self, send, route: str, backend: Backend, upstream: UpstreamResponse, started: float
    ) -> None:
        headers = [(asgi_io.RID, asgi_io.request_id())]
        if (ct := upstream.raw_content_type) is not None:
            headers.append((b"content-type", ct))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in self.relay(route, backend, upstream, started):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _failed(self, route: str, backend: Backend, kind: str) -> None:
        backend.breaker.failure()
        self.metrics.error(route, backend.name, kind)


def _retry_after(value: str | None) -> float:
    try:
        return min(60.0, max(1.0, float(value))) if value else 1.0
    except ValueError:
        return 1.0
