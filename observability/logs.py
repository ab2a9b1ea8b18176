"""Structured logs for every process of the product: one setup call, text or JSON lines.

Each entry point (the engine, the serving supervisor, every trainer rank) calls
:func:`configure_logging` first. The format comes from ``MLOPS_LOG_FORMAT``, read at that
call and never at import: ``text`` (the default, the lines the product always printed) or
``json``, one object per line::

    {"ts": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "serving.engine.access",
     "component": "engine", "message": "POST /v1/completions 200 41.2 ms",
     "model_version": "3", "request_id": "4f9c...", "status": 200, "latency_ms": 41.2}

Context fields (``run_id``, ``model_version``, ``request_id``, ``rank``) are added by a
``logging.Filter`` on the handler, so a line carries a field exactly when its value is known
and no caller passes them by hand. Values that hold for the whole process (the Dagster run
a trainer belongs to, the model version an engine serves, the torch rank) are bound once,
from ``DAGSTER_RUN_ID``, ``MLOPS_MODEL_VERSION`` and torchrun's ``RANK``, and apply to every
thread; values that hold for one request live in context variables (``request_id_var``),
which asyncio copies into each task, so concurrent requests never see each other's id.
A context variable that is set wins over the process-wide value. Inside an OpenTelemetry
span (see :mod:`observability.tracing`) a line also carries ``trace_id`` and ``span_id``.

Extra attributes given with ``extra={...}`` become JSON fields (as strings unless they are
plain scalars, so no object a library attaches can break a line). Dagster's own run logs reach
JSON through :func:`dagster_handler`, named by the instance's
``python_logs.dagster_handler_config``; Dagster attaches its run metadata to each record and
the formatter reads the run id, job, step and event type from it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
import uuid
from contextvars import ContextVar
from typing import Any, Literal, TextIO

from observability.tracing import current_ids

LogFormat = Literal["text", "json"]

FORMAT_ENV = "MLOPS_LOG_FORMAT"
RUN_ID_ENV = "DAGSTER_RUN_ID"
MODEL_VERSION_ENV = "MLOPS_MODEL_VERSION"
REQUEST_ID_HEADER = "x-request-id"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
CONTEXT_FIELDS = ("run_id", "model_version", "request_id", "rank")
TRACE_FIELDS = ("trace_id", "span_id")

run_id_var: ContextVar[str | None] = ContextVar("mlops_run_id", default=None)
model_version_var: ContextVar[str | None] = ContextVar("mlops_model_version", default=None)
request_id_var: ContextVar[str | None] = ContextVar("mlops_request_id", default=None)
rank_var: ContextVar[int | None] = ContextVar("mlops_rank", default=None)
_VARS: dict[str, ContextVar] = {
    "run_id": run_id_var,
    "model_version": model_version_var,
    "request_id": request_id_var,
    "rank": rank_var,
}
_bound: dict[str, Any] = {}

# A caller's id is echoed into logs and headers, so only short, plain tokens are kept.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured duplicate of the message
    "dagster_meta",
    "dagster_event",
    "dagster_event_batch_metadata",
}
_PLAIN = (str, int, float, bool)


def bind(**fields: Any) -> None:
    """Set process-wide context fields, seen by every thread; ``None`` removes one."""
    unknown = sorted(set(fields) - set(CONTEXT_FIELDS))
    if unknown:
        raise ValueError(f"unknown log context field(s) {unknown}; known: {list(CONTEXT_FIELDS)}")
    for name, value in fields.items():
        if value is None:
            _bound.pop(name, None)
        else:
            _bound[name] = value


def current_context() -> dict[str, Any]:
    """The context fields known here: process-wide values overridden by context variables."""
    values = dict(_bound)
    for name, var in _VARS.items():
        value = var.get()
        if value is not None:
            values[name] = value
    ids = current_ids()
    if ids is not None:
        values["trace_id"], values["span_id"] = ids
    return values


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(header: str | None) -> str:
    """The caller's ``x-request-id`` when it is a plain token of at most 128 chars, else a new id."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


class ContextFilter(logging.Filter):
    """Copies the known context fields onto each record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_context().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: fixed fields, then context, extras and the exception."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "component": self.component,
            "message": record.getMessage(),
        }
        entry.update(_dagster_fields(record))
        for name in CONTEXT_FIELDS + TRACE_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry.setdefault(name, value)
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and name not in entry and not name.startswith("_"):
                entry[name] = value if value is None or isinstance(value, _PLAIN) else str(value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _dagster_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Run id, job, step and event type of a record that went through Dagster's log manager."""
    meta = getattr(record, "dagster_meta", None)
    if not isinstance(meta, dict):
        return {}
    event = meta.get("dagster_event")
    fields = {
        "message": meta.get("orig_message") or record.getMessage(),
        "run_id": meta.get("run_id"),
        "job": meta.get("job_name"),
        "step": meta.get("step_key"),
        "event": getattr(event, "event_type_value", None),
    }
    return {k: v for k, v in fields.items() if v is not None}


def resolve_format(fmt: str | None = None) -> LogFormat:
    """``fmt``, or ``MLOPS_LOG_FORMAT`` when it is None; ``text`` when neither is set."""
    raw = fmt if fmt is not None else os.environ.get(FORMAT_ENV) or "text"
    value = raw.strip().lower()
    if value not in ("text", "json"):
        source = "fmt" if fmt is not None else FORMAT_ENV
        raise ValueError(f"{source} must be 'text' or 'json', got {raw!r}")
    return value  # type: ignore[return-value]


def build_formatter(
    component: str, fmt: LogFormat, text_format: str = TEXT_FORMAT
) -> logging.Formatter:
    return JsonFormatter(component) if fmt == "json" else logging.Formatter(text_format)


def bind_from_env() -> None:
    """Bind the run id, model version and torchrun rank the environment names."""
    rank = os.environ.get("RANK") if "LOCAL_RANK" in os.environ else None
    bind(
        run_id=os.environ.get(RUN_ID_ENV) or None,
        model_version=os.environ.get(MODEL_VERSION_ENV) or None,
        rank=int(rank) if rank is not None and rank.isdigit() else None,
    )


def stream_handler(
    component: str, fmt: LogFormat, stream: TextIO, text_format: str = TEXT_FORMAT
) -> logging.Handler:
    """A handler writing ``component``'s lines to ``stream`` in ``fmt``, with the context filter."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(build_formatter(component, fmt, text_format))
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(
    component: str,
    level: int = logging.INFO,
    fmt: str | None = None,
    *,
    stream: TextIO | None = None,
    text_format: str = TEXT_FORMAT,
) -> LogFormat:
    """Route the root logger (and Python warnings) to ``stream`` (stderr) in the chosen format.

    Replaces any handlers the root logger had, binds the context the environment names,
    and returns the format in use. An ``MLOPS_LOG_FORMAT`` that is neither ``text`` nor
    ``json`` logs as text, with one warning saying so; an invalid ``fmt`` raises ValueError.
    """
    problem = None
    if fmt is None:
        try:
            chosen = resolve_format()
        except ValueError as exc:
            chosen, problem = "text", exc
    else:
        chosen = resolve_format(fmt)
    handler = stream_handler(component, chosen, stream or sys.stderr, text_format)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
    bind_from_env()
    if problem is not None:
        logging.getLogger(__name__).warning("%s; logging as text", problem)
    return chosen


def dagster_handler() -> logging.Handler:
    """The handler a Dagster instance's ``python_logs.dagster_handler_config`` names.

    With ``MLOPS_LOG_FORMAT=json`` every record of a run (Dagster's events and
    ``context.log`` lines) goes to stdout as a JSON line with the run id; Dagster's console
    logger keeps printing its text lines on stderr. Otherwise it discards records, since
    that console logger already prints them as text.
    """
    try:
        chosen = resolve_format()
    except ValueError:
        chosen = "text"
    if chosen != "json":
        return logging.NullHandler()
    return stream_handler("dagster", "json", sys.stdout)
