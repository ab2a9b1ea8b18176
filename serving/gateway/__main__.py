"""``python -m serving.gateway --host H --port P``: the OpenAI-compatible gateway.

State lives in ``$MLOPS_HOME/serving/gateway-state.json`` (``--state`` overrides); the admin
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
from pathlib import Path

import uvicorn

from observability.logs import configure_logging
from observability.tracing import configure_tracing
from observability.tracing_http import trace_asgi
from serving.errors import InvalidRequest
from serving.gateway.app import GatewayConfig, create_app
from serving.partners.config import ServingConfigError, default_config_path, load_serving_config
from serving.partners.health import HealthPolicy


def default_state_path() -> Path:
    return Path(os.environ.get("MLOPS_HOME", "./.mlops")) / "serving" / "gateway-state.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible gateway with canary routing")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--state", type=Path, default=None, help="routing state JSON file")
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
    configure_logging("gateway")
    configure_tracing("gateway")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request otherwise

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
    config = GatewayConfig(
        state_path=args.state or default_state_path(),
        admin_token=os.environ.get("MLOPS_GATEWAY_ADMIN_TOKEN") or None,
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
    uvicorn.run(
        trace_asgi(app, "serving.gateway"),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=2048,
        log_config=None,  # uvicorn's own lines go through the handler configured above
    )


if __name__ == "__main__":
    main()
