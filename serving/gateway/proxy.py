"""The proxy hot path: forward one OpenAI request along a local route's attempt plan.

Kept lean on purpose (it is benchmarked). ``POST /v1/completions`` and
``/v1/chat/completions`` come here as raw ASGI: the body is read once under the size limit
and parsed once to find ``model`` and ``stream``, then forwarded byte-for-byte (unless the
backend needs a different model name) through :class:`~serving.gateway.upstream.UpstreamPool`,
keep-alive HTTP/1.1 connections parsed by ``httptools``. Answers go straight to ASGI
``send``, without Starlette ``Request``/``Response`` objects. On the development VM this
path costs about 60 µs of CPU per request, against 730-980 µs with ``httpx2`` and Starlette
(``benchmarks/gateway_components.py`` splits the cost by component).

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

A ``model`` that is not a local route (a fallback route such as ``auto``, or a partner) is
handed to :class:`~serving.gateway.partner_proxy.PartnerProxy`, which may come back here
through :meth:`Proxy.attempt_local` for the sovereign entry of a fallback route.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.responses import Response, StreamingResponse

from observability.logs import REQUEST_ID_HEADER, request_id_from, request_id_var
from observability.tracing_http import http
from serving.errors import (
    InvalidRequest,
    NotFound,
    Overloaded,
    RequestTooLarge,
    ServingError,
    Unavailable,
    error_body,
)
from serving.gateway.keys import ClientKey, KeyTable
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.routing import Backend, Route, RoutingTable
from serving.gateway.upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout

if TYPE_CHECKING:
    from serving.gateway.partner_proxy import PartnerProxy

log = logging.getLogger(__name__)

_JSON = b"application/json"
_RID = REQUEST_ID_HEADER.encode("latin-1")

#: A complete upstream answer: status, raw content type, body.
Answer = tuple[int, bytes | None, bytes]


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


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


class Proxy:
    """ASGI app for the proxied POST routes; every other path stays with the main app."""

    def __init__(
        self,
        table: RoutingTable,
        metrics: GatewayMetrics,
        pool: UpstreamPool,
        max_body_bytes: int,
        partners: PartnerProxy | None = None,
        keys: KeyTable | None = None,
    ) -> None:
        self.table, self.metrics, self.pool = table, metrics, pool
        self.max_body_bytes = max_body_bytes
        self.partners = partners
        self.keys = keys
        self.tracing = http(__name__)  # a do-nothing stand-in unless traces are exported

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # no lifespan of its own: the pool's owner closes it
            return
        try:
            await self.forward(scope, receive, send)
        except _ClientGone:
            return
        except ServingError as exc:
            extra = (
                ((b"retry-after", exc.retry_after.encode()),) if isinstance(exc, Overloaded) else ()
            )
            await _respond(send, exc.status_code, _JSON, _error(exc), _request_id(), extra)
        except Exception:  # never let one request take the connection down without an answer
            log.exception("proxy failed")
            error = _error(ServingError("internal gateway error"))
            await _respond(send, 500, _JSON, error, _request_id())

    async def forward(self, scope, receive, send) -> None:
        body, caller_id, authorization = await self._read_body(scope, receive)
        rid = request_id_from(caller_id)
        request_id_var.set(rid)  # each request runs in its own task: log lines carry it
        key = None
        if self.keys is not None and self.keys.required:
            key = self._authenticate(authorization)
        payload = parse_request(body)
        name = payload["model"]
        stream = payload.get("stream") is True
        path = scope["path"]
        route = self.table.routes.get(name)
        if route is None:
            if self.partners is None:
                raise NotFound(f"The model `{name}` does not exist", "model", "model_not_found")
            response = await self.partners.forward(name, body, payload, path, stream)
            if key is not None:
                self._charge(key, payload, stream, getattr(response, "body", None))
            response.headers[REQUEST_ID_HEADER] = rid
            await response(scope, receive, send)
            return
        attempt = self.attempt_local(name, route, body, payload, path, stream, None, rid)
        outcome = await _unless_gone(receive, attempt)
        if outcome.stream is not None:
            self.metrics.response(name, 200)
            if key is not None:
                self._charge(key, payload, True, None)
            await self._stream(receive, send, name, *outcome.stream)
            return
        answer = outcome.answer or outcome.last
        if key is not None and outcome.answer is not None and outcome.answer[0] == 200:
            self._charge(key, payload, False, outcome.answer[2])
        if answer is not None:
            self.metrics.response(name, answer[0])
            await _respond(send, *answer, rid.encode("latin-1"))
            return
        if outcome.shed_retry_s is not None:
            self.metrics.response(name, 429)
            raise outcome.overloaded(name)
        self.metrics.response(name, 503)
        raise Unavailable(
            f"no healthy backend for `{name}`; retry shortly", "model", "backend_unavailable"
        )

    async def attempt_local(
        self,
        label: str,
        route: Route,
        body: bytes,
        payload: dict,
        path: str,
        stream: bool,
        previous: str | None,
        request_id: str | None = None,
    ) -> LocalOutcome:
        """Try ``route``'s attempt plan; metrics are labelled with ``label`` (the name the
        client asked for: the route itself, or a fallback route through it). The request id
        goes to the engine, so its log lines can be joined with the gateway's."""
        last: Answer | None = None
        shed_retry_s: float | None = None
        headers = {"content-type": "application/json"}
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        full: list[str] = []
        for backend in route.attempts(self.table.backends, full):
            if previous is not None:
                self.metrics.retry(label, previous, backend.name)
            previous = backend.name
            content = body
            model = backend.model or route.name
            if model != payload["model"]:
                content = json.dumps({**payload, "model": model}).encode()
            self.metrics.attempt(label, backend.name)
            started = time.perf_counter()
            try:
                with self.tracing.client(backend.name, headers) as span:  # sets `traceparent`
                    upstream = await self.pool.request(
                        "POST", backend.url + path, content, headers, backend.timeout_s
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
            if stream and status == 200:
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

    def _authenticate(self, authorization: bytes | None) -> ClientKey:
        try:
            key = self.keys.authenticate(authorization)
        except Overloaded:
            name = self.keys.name_of(authorization)
            self.metrics.key_rejected(name, "quota")
            raise
        self.metrics.key_request(key.name)
        return key

    def _charge(self, key: ClientKey, payload: dict, stream: bool, body: bytes | None) -> None:
        """Tokens against the key's quota: the answer's usage, or for a stream (not parsed
        here) its ``max_tokens`` times ``n``, the most it can cost."""
        tokens = 0
        if not stream and body:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                tokens = int(json.loads(body)["usage"]["total_tokens"])
        else:
            limit = payload.get("max_tokens") or payload.get("max_completion_tokens") or 16
            n = payload.get("n") or 1
            if isinstance(limit, int) and isinstance(n, int):
                tokens = limit * n
        key.charge_tokens(self.keys.clock(), tokens)
        self.metrics.key_tokens(key.name, tokens)

    def as_response(self, label: str, outcome: LocalOutcome) -> Response | None:
        """The outcome as a Starlette response (for the partner path), or None."""
        if outcome.stream is not None:
            backend, upstream, started = outcome.stream
            media_type = _media(upstream.raw_content_type)
            relay = self.relay(label, backend, upstream, started)
            return StreamingResponse(relay, media_type=media_type)
        if outcome.answer is not None:
            status, content_type, data = outcome.answer
            return Response(data, status, media_type=_media(content_type))
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

    async def _read_body(self, scope, receive) -> tuple[bytes, str | None, bytes | None]:
        """The body under the size limit, the caller's request id and authorization headers."""
        limit, caller_id, authorization = self.max_body_bytes, None, None
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                raise RequestTooLarge(f"request body over the {limit}-byte limit")
            if key == _RID:
                caller_id = value.decode("latin-1")
            elif key == b"authorization":
                authorization = value
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"request body over the {limit}-byte limit")
            if not message.get("more_body", False):
                if not chunks:
                    return chunk, caller_id, authorization
                chunks.append(chunk)
                return b"".join(chunks), caller_id, authorization
            chunks.append(chunk)

    async def _stream(
        self, receive, send, route: str, backend: Backend, upstream: UpstreamResponse, started
    ) -> None:
        """Relay the stream while watching for the client leaving, which ends the relay."""
        relay = asyncio.ensure_future(self._send_stream(send, route, backend, upstream, started))
        gone = asyncio.ensure_future(_disconnected(receive))
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
        headers = [(_RID, _request_id())]
        if (ct := upstream.raw_content_type) is not None:
            headers.append((b"content-type", ct))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in self.relay(route, backend, upstream, started):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _failed(self, route: str, backend: Backend, kind: str) -> None:
        backend.breaker.failure()
        self.metrics.error(route, backend.name, kind)


def parse_request(body: bytes) -> dict:
    """The OpenAI request body as a dict with a string ``model``, or InvalidRequest."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    if not isinstance(payload.get("model"), str):
        raise InvalidRequest("`model` is required and must be a string", "model")
    return payload


def _retry_after(value: str | None) -> float:
    try:
        return min(60.0, max(1.0, float(value))) if value else 1.0
    except ValueError:
        return 1.0


async def _unless_gone(receive, work):
    """``work``'s result; cancelled (and :class:`_ClientGone`) if the client leaves first, so
    the upstream connection closes and the engine drops the request from its queue."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise _ClientGone
    return task.result()


def _media(content_type: bytes | None) -> str | None:
    return content_type.decode("latin-1") if content_type is not None else None


def _error(exc: ServingError) -> bytes:
    return error_body(exc.status_code, exc.message, exc.error_type, exc.param, exc.code)


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _request_id() -> bytes:
    return (request_id_var.get() or "").encode("latin-1")


async def _respond(
    send,
    status: int,
    content_type: bytes | None,
    body: bytes,
    request_id: bytes = b"",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    headers = [(b"content-length", b"%d" % len(body)), *extra]
    if request_id:
        headers.append((_RID, request_id))
    if content_type is not None:
        headers.append((b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
