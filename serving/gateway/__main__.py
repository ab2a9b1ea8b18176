"""``python -m serving.gateway --host H --port P``: the OpenAI-compatible gateway.

State lives in PostgreSQL when ``--state-url`` (or ``MLOPS_GATEWAY_STATE_URL``) names one,
shared by every replica (``shared_state.py``); otherwise in
``$MLOPS_HOME/serving/gateway-state.json`` (``--state`` overrides). ``--workers N`` runs N
processes on the port (``workers.py``); with the file they share it through ``flock`` and
its version, which they watch, so N > 1 is allowed on one host either way. The admin
token comes from ``MLOPS_GATEWAY_ADMIN_TOKEN``; the serving config (partners, fallback routes)
from ``--config``, else ``$MLOPS_SERVING_CONFIG``, else ``$MLOPS_HOME/serving/config.yaml`` if it
exists. ``--require-api-keys`` (or ``MLOPS_GATEWAY_REQUIRE_API_KEYS=1``) makes every OpenAI
call need a client key (``serving/gateway/keys.py``). All are read here, at start, never at
import. The ``--partner-*`` options tune the health rules documented in
``serving/partners/health.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

import uvicorn

from observability.logs import configure_logging
from observability.settings import mlops_home
from observability.tracing import configure_tracing
from observability.tracing_http import trace_asgi
from serving.errors import InvalidRequest
from serving.gateway.app import GatewayConfig, create_app
from serving.gateway.workers import WorkerPlan, bind, run_workers
from serving.partners.config import ServingConfigError, default_config_path, load_serving_config
from serving.partners.health import HealthPolicy


def default_state_path() -> Path:
    return mlops_home() / "serving" / "gateway-state.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible gateway with canary routing")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--state", type=Path, default=None, help="routing state JSON file")
    parser.add_argument(
        "--state-url",
        default=None,
        help="postgresql://... shared by every replica (also MLOPS_GATEWAY_STATE_URL); "
        "without it the state file is used",
    )
    parser.add_argument("--state-table", default="gateway_state")
    parser.add_argument("--state-schema", default="public")
    parser.add_argument(
        "--workers", type=int, default=1, help="gateway processes sharing the port (full replicas)"
    )
    parser.add_argument(
        "--advertise-host",
        default=None,
        help="host other processes reach this one at, for the replica registry "
        "(default: --host, or 127.0.0.1 when --host is a wildcard)",
    )
    parser.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument("--breaker-threshold", type=int, default=3)
    parser.add_argument("--breaker-cooldown-s", type=float, default=5.0)
    parser.add_argument(
        "--max-concurrency-per-backend",
        type=int,
        default=256,
        help="requests in flight per backend; more are shed with 429 + Retry-After",
    )
    parser.add_argument("--config", type=Path, default=None, help="serving config YAML")
    parser.add_argument(
        "--require-api-keys",
        action="store_true",
        default=None,
        help="every OpenAI call needs a client API key (also MLOPS_GATEWAY_REQUIRE_API_KEYS=1)",
    )
    defaults = HealthPolicy()
    parser.add_argument(
        "--partner-slow-s",
        type=float,
        default=defaults.slow_p95_s,
        help="a partner whose p95 latency reaches this is degraded",
    )
    parser.add_argument(
        "--partner-min-dwell-s",
        type=float,
        default=defaults.min_dwell_s,
        help="least time a partner stays degraded/down before it may recover",
    )
    parser.add_argument(
        "--partner-ttft-floor-s",
        type=float,
        default=defaults.ttft_floor_s,
        help="least time-to-first-token deadline of a partner attempt",
    )
    args = parser.parse_args(argv)
    configure_logging("gateway" if args.worker_index is None else f"gateway-{args.worker_index}")
    configure_tracing("gateway")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request otherwise
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.workers > 1 and args.listen_fd is None:
        plan = WorkerPlan(
            args.host, args.port, args.workers, list(sys.argv[1:] if argv is None else argv)
        )
        sys.exit(run_workers(plan))

    config_path = args.config or default_config_path()
    try:
        serving_config = load_serving_config(config_path) if config_path else None
        policy = HealthPolicy(
            slow_p95_s=args.partner_slow_s,
            min_dwell_s=args.partner_min_dwell_s,
            ttft_floor_s=args.partner_ttft_floor_s,
        )
    except (ServingConfigError, ValueError) as exc:
        parser.error(str(exc))
    advertise = args.advertise_host or (
        "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    )
    sockets = None
    if args.listen_fd is not None:  # a worker: the public socket, plus a private one
        private = bind(advertise, 0)
        sockets = [socket.socket(fileno=args.listen_fd), private]
        advertise_port = private.getsockname()[1]
    else:
        advertise_port = args.port
    config = GatewayConfig(
        state_path=args.state or default_state_path(),
        admin_token=os.environ.get("MLOPS_GATEWAY_ADMIN_TOKEN") or None,
        state_url=args.state_url or os.environ.get("MLOPS_GATEWAY_STATE_URL") or None,
        state_table=args.state_table,
        state_schema=args.state_schema,
        advertise_url=f"http://{advertise}:{advertise_port}",
        max_body_bytes=args.max_body_bytes,
        breaker_threshold=args.breaker_threshold,
        breaker_cooldown_s=args.breaker_cooldown_s,
        max_concurrency_per_backend=args.max_concurrency_per_backend,
        require_api_keys=bool(
            args.require_api_keys
            or os.environ.get("MLOPS_GATEWAY_REQUIRE_API_KEYS", "").lower() in ("1", "true", "yes")
        ),
        serving_config=serving_config,
        partner_policy=policy,
    )
    try:
        app = create_app(config)
    except InvalidRequest as exc:  # the config declares a name the saved state uses otherwise
        parser.error(f"serving config {config_path}: {exc.message}")
    except ValueError as exc:  # a bad state URL, table or schema name
        parser.error(str(exc))
    app = trace_asgi(app, "serving.gateway")  # server spans, in a worker as in one process
    if sockets is not None:
        server = uvicorn.Server(
            uvicorn.Config(
                app, log_level="warning", access_log=False, log_config=None, lifespan="on"
            )
        )
        server.run(sockets=sockets)
        return
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=2048,
        log_config=None,  # uvicorn's own lines go through the handler configured above
    )


if __name__ == "__main__":
    main()
