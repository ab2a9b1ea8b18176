"""Traces of Dagster steps: a step is one span in its run's trace (trace id = run id).

:func:`traced_step` wraps an asset or op body: it turns export on when the environment names
an OTLP endpoint (read in the step's process, when the step runs) and makes the step's span
current, so what the step calls joins the run's trace: the registry's MLflow calls
(`registry/client.py`) and the torchrun ranks, which get the span as `TRACEPARENT` in
their environment (:func:`observability.tracing.child_env`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from observability.tracing import configure_tracing, run_span

F = TypeVar("F", bound=Callable)


def traced_step(fn: F) -> F:
    """`fn` (whose first argument is the Dagster context) inside a span of its run's trace.

    `functools.wraps` keeps the name, docstring and signature Dagster reads.
    """

    @functools.wraps(fn)
    def step(context, *args, **kwargs):
        configure_tracing("dagster")
        with run_span(fn.__name__, context.run_id, **{"dagster.run_id": context.run_id}):
            return fn(context, *args, **kwargs)

    return step  # type: ignore[return-value]
