"""Spans for HTTP: a server span per request (raw ASGI) and client spans for calls out.

:func:`trace_asgi` wraps an ASGI app (the gateway, the embedded engine): each request gets
a ``SERVER`` span continuing the caller's ``traceparent`` (or starting a trace), current
while the app runs, so everything the request logs or calls joins it; probe paths
(``/health``, ``/ready``, ``/metrics``) get none. With export off it returns the app itself.

:func:`http` gives a hot path its :class:`HttpTracing`: ``client(peer, headers)`` starts a
``CLIENT`` span and writes its ``traceparent`` into ``headers`` (omit ``headers`` for a
partner API: a trace id means nothing to it and stays inside). With export off it is
:data:`NULL_TRACING`, whose every span is one shared object doing nothing.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from observability import tracing

_TRACE_HEADERS = (b"traceparent", b"tracestate")


class _NullSpan:
    __slots__ = ()

    def __enter__(self) -> _NullSpan:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def response(self, status: int) -> None:
        pass

    def finish(self, status: int | None = None, error: str | None = None) -> None:
        pass


NULL_SPAN = _NullSpan()


class _ClientSpan:
    __slots__ = ("span",)

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def __enter__(self) -> _ClientSpan:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            self.span.record_exception(exc)
            tracing.record_status(self.span, error=f"{exc_type.__name__}: {exc}")
        self.span.end()
        return False

    def response(self, status: int) -> None:
        tracing.record_status(self.span, status)

    def finish(self, status: int | None = None, error: str | None = None) -> None:
        """End the span (for a call that is not one ``with`` block)."""
        tracing.record_status(self.span, status, error)
        self.span.end()


class NullTracing:
    """Tracing off: nothing is created, nothing is written."""

    enabled = False

    def client(self, peer: str, headers: dict[str, str] | None = None) -> _NullSpan:
        return NULL_SPAN

    def phases(self, *phases: tuple[str, int, int]) -> None:
        pass


NULL_TRACING = NullTracing()


class HttpTracing:
    """Tracing on: real spans under the current context."""

    enabled = True

    def __init__(self, name: str) -> None:
        self.tracer = trace.get_tracer(name)

    def client(self, peer: str, headers: dict[str, str] | None = None) -> _ClientSpan:
        span = self.tracer.start_span(
            f"POST {peer}", kind=SpanKind.CLIENT, attributes={"peer.service": peer}
        )
        if headers is not None:
            tracing.inject(headers, span)
        return _ClientSpan(span)

    def phases(self, *phases: tuple[str, int, int]) -> None:
        """Child spans of the current span from ``(name, start_ns, end_ns)`` measured earlier
        (e.g. on a scheduler thread, where the request's context is not current)."""
        for name, start_ns, end_ns in phases:
            self.tracer.start_span(name, start_time=start_ns).end(end_time=end_ns)


def http(name: str) -> HttpTracing | NullTracing:
    """The tracing a hot path uses: real when export is configured, else :data:`NULL_TRACING`."""
    return HttpTracing(name) if tracing.enabled() else NULL_TRACING


def trace_asgi(app: Any, name: str) -> Any:
    """``app`` with a server span per request when export is configured; else ``app``."""
    return _TracedASGI(app, name) if tracing.enabled() else app


class _TracedASGI:
    def __init__(self, app: Any, name: str) -> None:
        self.app = app
        self.tracer = trace.get_tracer(name)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in tracing.QUIET_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope["headers"]
            if key in _TRACE_HEADERS
        }
        method, path = scope["method"], scope["path"]
        status = 500  # what the client gets when the app fails before answering
        started = time.time_ns()

        async def traced_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.start_as_current_span(
            f"{method} {path}",
            context=tracing.extract(carrier),
            kind=SpanKind.SERVER,
            start_time=started,
            attributes={"http.request.method": method, "url.path": path},
        ) as span:
            try:
                await self.app(scope, receive, traced_send)
            finally:
                tracing.record_status(span, status)
