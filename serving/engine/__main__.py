"""``python -m serving.engine --model DIR --served-model-name NAME --host H --port P``.

Loads the model before the socket opens, so ``/health`` answering 200 means ready to serve.
Logs go to stderr as text or JSON lines (``MLOPS_LOG_FORMAT``), with the served model
version (``MLOPS_MODEL_VERSION``, which the launcher sets) and each request's id.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from observability.hf import route_transformers_logs
from observability.logs import configure_logging
from observability.tracing import configure_tracing
from observability.tracing_http import trace_asgi
from serving.engine.admission import AdmissionLimits
from serving.engine.app import create_app
from serving.engine.batching import BatchConfig, BatchingEngine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Embedded CPU engine with vLLM's OpenAI API")
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    parser.add_argument("--served-model-name", default=None, help="name clients use (default: dir)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--default-max-tokens", type=int, default=16)
    parser.add_argument(
        "--max-queued-requests",
        type=int,
        default=256,
        help="requests waiting for a batch; more are shed with 429 + Retry-After",
    )
    parser.add_argument(
        "--max-queue-wait-s",
        type=float,
        default=5.0,
        help="shed with 429 once the queued work would make a new request wait longer",
    )
    args = parser.parse_args(argv)
    if configure_logging("engine") == "json":
        route_transformers_logs()
    configure_tracing("engine")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    limits = AdmissionLimits(
        max_queued_requests=args.max_queued_requests, max_queue_wait_s=args.max_queue_wait_s
    )
    config = BatchConfig(
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1e3,
        admission=limits,
    )
    engine = BatchingEngine(args.model, args.served_model_name or args.model.name, config)
    engine.start()
    # in hand at most: the queue, one batch running, and as many being parsed
    in_flight = args.max_queued_requests + 2 * args.max_batch_size
    app = create_app(engine, default_max_tokens=args.default_max_tokens, max_in_flight=in_flight)
    logging.getLogger("serving.engine").info(
        "serving %s as %r on http://%s:%d",
        args.model,
        engine.served_model_name,
        args.host,
        args.port,
    )
    # log_config=None: uvicorn's own lines go through the handler configured above.
    uvicorn.run(
        trace_asgi(app, "serving.engine"),  # the request's span, outside its access log line
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        log_config=None,
    )


if __name__ == "__main__":
    main()
