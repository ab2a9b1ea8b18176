"""The proxy hot path: forward one OpenAI request along a route's attempt plan.

Kept lean on purpose (it is benchmarked): the body is parsed once to find ``model`` and
``stream``, forwarded byte-for-byte unless the backend needs a different model name, through
one shared pooled ``httpx.AsyncClient``. A connection error, timeout or 5xx counts against
the backend's breaker and moves on to the next attempt. Streams are retried only before the
first byte reaches the client: once a stream response has started, a failure ends it.

The client is ``httpx2``, the maintained fork of httpx with the same API (already required by
``openai``): httpcore 1.0's pool rescans every connection for every queued request, which
collapsed throughput to ~80 req/s at 64 concurrent clients on this hardware
(encode/httpcore#1035); httpx2's pool stays flat.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx2 as httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from serving.errors import InvalidRequest, NotFound, RequestTooLarge, Unavailable
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.routing import Backend, RoutingTable

_FORWARD_HEADERS = {"content-type": "application/json"}


class Proxy:
    def __init__(
        self,
        table: RoutingTable,
        metrics: GatewayMetrics,
        client: httpx.AsyncClient,
        max_body_bytes: int,
    ) -> None:
        self.table, self.metrics, self.client = table, metrics, client
        self.max_body_bytes = max_body_bytes
        self._timeouts: dict[float, httpx.Timeout] = {}

    async def read_request(self, request: Request) -> tuple[bytes, dict]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise RequestTooLarge(f"request body over the {self.max_body_bytes}-byte limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RequestTooLarge(f"request body over the {self.max_body_bytes}-byte limit")
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            payload = json.loads(body)
        except ValueError:
            raise InvalidRequest("request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise InvalidRequest("request body must be a JSON object")
        if not isinstance(payload.get("model"), str):
            raise InvalidRequest("`model` is required and must be a string", "model")
        return body, payload

    async def forward(self, request: Request) -> Response:
        body, payload = await self.read_request(request)
        name = payload["model"]
        route = self.table.routes.get(name)
        if route is None:
            raise NotFound(f"The model `{name}` does not exist", "model", "model_not_found")
        stream = payload.get("stream") is True
        path = request.scope["path"]
        previous: Backend | None = None
        last: Response | None = None
        for backend in route.attempts(self.table.backends):
            if previous is not None:
                self.metrics.retry(name, previous.name, backend.name)
            previous = backend
            content = body
            if backend.model is not None and backend.model != name:
                content = json.dumps({**payload, "model": backend.model}).encode()
            self.metrics.attempt(name, backend.name)
            started = time.perf_counter()
            try:
                upstream = await self.client.send(
                    self.client.build_request(
                        "POST",
                        backend.url + path,
                        content=content,
                        headers=_FORWARD_HEADERS,
                        timeout=self._timeout(backend.timeout_s),
                    ),
                    stream=True,
                )
            except httpx.TimeoutException:
                self._failed(name, backend, "timeout")
                continue
            except httpx.HTTPError:
                self._failed(name, backend, "connect")
                continue
            if upstream.status_code >= 500:
                last = Response(
                    await upstream.aread(),
                    upstream.status_code,
                    media_type=upstream.headers.get("content-type"),
                )
                await upstream.aclose()
                self._failed(name, backend, "status_5xx")
                continue
            if stream and upstream.status_code == 200:
                self.metrics.response(name, 200)
                return StreamingResponse(
                    self._relay(name, backend, upstream, started),
                    media_type=upstream.headers.get("content-type"),
                )
            try:
                data = await upstream.aread()
            except httpx.HTTPError:
                self._failed(name, backend, "read")
                continue
            finally:
                await upstream.aclose()
            backend.breaker.success()
            self.metrics.latency(name, backend.name, time.perf_counter() - started)
            self.metrics.response(name, upstream.status_code)
            return Response(
                data, upstream.status_code, media_type=upstream.headers.get("content-type")
            )
        if last is not None:
            self.metrics.response(name, last.status_code)
            return last
        self.metrics.response(name, 503)
        raise Unavailable(
            f"no healthy backend for `{name}`; retry shortly", "model", "backend_unavailable"
        )

    async def _relay(
        self, route: str, backend: Backend, upstream: httpx.Response, started: float
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError:
            self._failed(route, backend, "stream")
            return
        finally:
            await upstream.aclose()
        backend.breaker.success()
        self.metrics.latency(route, backend.name, time.perf_counter() - started)

    def _failed(self, route: str, backend: Backend, kind: str) -> None:
        backend.breaker.failure()
        self.metrics.error(route, backend.name, kind)

    def _timeout(self, seconds: float) -> httpx.Timeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._timeouts[seconds] = httpx.Timeout(seconds, connect=min(seconds, 2.0))
        return timeout
