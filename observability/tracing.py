"""Traces for every process of the product: OpenTelemetry spans, exported over OTLP/HTTP.

Each entry point calls :func:`configure_tracing` once at start-up (never at import). Export
is on exactly when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; the OpenTelemetry SDK then reads the other
standard variables itself (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_TIMEOUT``, ...). Spans leave through a
batch processor (a bounded queue, a background thread, the exporter's own timeout), so a
collector that is down never blocks a request; what is queued is flushed at exit.

With export off, hot paths pay nothing: :func:`http` returns :data:`NULL_TRACING`, whose
spans are one shared do-nothing object, and :func:`trace_asgi` returns the app unchanged.
Context crosses processes as a W3C ``traceparent``: in HTTP headers (gateway to engine, to
partners) and in the ``TRACEPARENT`` environment variable (a Dagster step to its torchrun
ranks, see :func:`span_from_env`). A Dagster run's trace id is its run id (a UUID is 128
bits, like a trace id), so a run's spans are found from the run id alone.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
TRACEPARENT_ENV = "TRACEPARENT"
TRACEPARENT_HEADER = "traceparent"
QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})

_propagator = TraceContextTextMapPropagator()
_pinned_trace_id: ContextVar[int | None] = ContextVar("mlops_pinned_trace_id", default=None)
_enabled = False


def otlp_traces_endpoint(environ: MutableMapping[str, str] | None = None) -> str | None:
    """The OTLP/HTTP traces URL the environment names, or None when export is off."""
    env = os.environ if environ is None else environ
    if env.get(ENDPOINT_ENVS[0]):
        return env[ENDPOINT_ENVS[0]]
    base = env.get(ENDPOINT_ENVS[1])
    return base.rstrip("/") + "/v1/traces" if base else None


def configure_tracing(service: str) -> bool:
    """Install the OTLP exporter when the environment names an endpoint; True when it did.

    ``service`` is the ``service.name`` unless ``OTEL_SERVICE_NAME`` says otherwise. A
    second call in the same process changes nothing.
    """
    global _enabled
    if _enabled or otlp_traces_endpoint() is None:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource({"service.name": service}).merge(OTELResourceDetector().detect())
    if os.environ.get("OTEL_SERVICE_NAME"):
        resource = resource.merge(Resource({"service.name": os.environ["OTEL_SERVICE_NAME"]}))
    provider = TracerProvider(resource=resource, id_generator=_run_id_generator())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def enabled() -> bool:
    return _enabled


def shutdown() -> None:
    """Flush and stop the exporter (also done at interpreter exit)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the span current here, or None when there is none."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to hand to another process."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT_HEADER)


def inject(carrier: dict[str, str], span: trace.Span) -> None:
    """Write ``span``'s ``traceparent`` into ``carrier`` (HTTP headers)."""
    _propagator.inject(carrier, context=trace.set_span_in_context(span))


def extract(carrier: dict[str, str]) -> otel_context.Context:
    """The context a ``traceparent`` in ``carrier`` names (empty without a valid one)."""
    return _propagator.extract(carrier)


def run_trace_id(run_id: str) -> int:
    """A Dagster run's trace id: its run id read as the 128-bit number it is."""
    try:
        return uuid.UUID(run_id).int
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, run_id).int


@contextlib.contextmanager
def run_span(name: str, run_id: str, **attributes: Any) -> Iterator[trace.Span]:
    """A root span whose trace id is ``run_id``'s; current while the block runs.

    With export off it is a non-recording span that still carries that trace id, so the
    ``TRACEPARENT`` handed on (and every log line) names the run's trace either way.
    """
    trace_id = run_trace_id(run_id)
    if not _enabled:
        span_id = uuid.uuid4().int & (2**64 - 1) or 1
        span = NonRecordingSpan(SpanContext(trace_id, span_id, False, trace.TraceFlags(1)))
        with trace.use_span(span):
            yield span
        return
    token = _pinned_trace_id.set(trace_id)
    try:
        span = tracer(__name__).start_span(
            name, context=otel_context.Context(), attributes=attributes
        )
    finally:
        _pinned_trace_id.reset(token)
    with trace.use_span(span, end_on_exit=True):
        yield span


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager:
    """A child span of the current one while the block runs; nothing at all with export off."""
    if not _enabled:
        return contextlib.nullcontext()
    return tracer(__name__).start_as_current_span(name, attributes=attributes)


@contextlib.contextmanager
def span_from_env(name: str, **attributes: Any) -> Iterator[trace.Span]:
    """A span continuing the ``TRACEPARENT`` of the environment (a new trace without one).

    With export off the incoming context is still made current, so log lines carry the
    trace id the parent process handed down.
    """
    parent = _propagator.extract({TRACEPARENT_HEADER: os.environ.get(TRACEPARENT_ENV, "")})
    token = otel_context.attach(parent)
    try:
        with tracer(__name__).start_as_current_span(name, attributes=attributes) as span:
            yield span
    finally:
        otel_context.detach(token)


def child_env() -> dict[str, str]:
    """``{"TRACEPARENT": ...}`` of the current span for a child process; empty without one."""
    value = traceparent()
    return {TRACEPARENT_ENV: value} if value else {}


def _run_id_generator():
    """Random ids, except a root span's trace id while :func:`run_span` pins one."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class RunIdGenerator(RandomIdGenerator):
        def generate_trace_id(self) -> int:
            return _pinned_trace_id.get() or super().generate_trace_id()

        def is_trace_id_random(self) -> bool:
            return _pinned_trace_id.get() is None

    return RunIdGenerator()


def record_status(span: trace.Span, status: int | None = None, error: str | None = None) -> None:
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error is not None or (status is not None and status >= 500):
        span.set_status(Status(StatusCode.ERROR, error))
