"""ASGI middleware that gives every HTTP request an id and exactly one log line.

The id is the caller's ``x-request-id`` when it is a plain token (so a gateway and the
engine behind it log the same id for one user request), a new one otherwise. It is set in
:data:`observability.logs.request_id_var` for everything the request logs, and returned in
the response's ``x-request-id`` header. The line is written when the response ends (after
the last streamed chunk), with method, path, status and latency; probe paths (``/health``,
``/metrics``) log at DEBUG, so a supervisor polling them does not flood the log.

Plain ASGI rather than a Starlette ``BaseHTTPMiddleware``: it adds one header and a
timestamp per request and never buffers or re-wraps a streaming body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from observability.logs import REQUEST_ID_HEADER, request_id_from, request_id_var

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEADER = REQUEST_ID_HEADER.encode("latin-1")


class RequestLogMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        logger: str = "http.access",
        quiet_paths: tuple[str, ...] = ("/health", "/metrics"),
    ) -> None:
        self.app = app
        self.log = logging.getLogger(logger)
        self.quiet_paths = frozenset(quiet_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(_header(scope, _HEADER))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500  # what the client gets when the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _HEADER]
                message = {**message, "headers": [*headers, (_HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._log(scope, status, (time.perf_counter() - started) * 1e3)
            request_id_var.reset(token)

    def _log(self, scope: Scope, status: int, latency_ms: float) -> None:
        path = scope.get("path", "")
        level = logging.DEBUG if path in self.quiet_paths else logging.INFO
        if not self.log.isEnabledFor(level):
            return
        method = scope.get("method", "")
        self.log.log(
            level,
            "%s %s %d %.1f ms",
            method,
            path,
            status,
            latency_ms,
            extra={
                "method": method,
                "path": path,
                "status": status,
                "latency_ms": round(latency_ms, 2),
            },
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
