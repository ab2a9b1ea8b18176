"""``python -m serving.gateway --host H --port P``: the OpenAI-compatible gateway.

State lives in ``$MLOPS_HOME/serving/gateway-state.json`` (``--state`` overrides); the admin
token comes from ``MLOPS_GATEWAY_ADMIN_TOKEN``. Both are read here, at start, never at import.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import uvicorn

from serving.gateway.app import GatewayConfig, create_app


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request otherwise

    config = GatewayConfig(
        state_path=args.state or default_state_path(),
        admin_token=os.environ.get("MLOPS_GATEWAY_ADMIN_TOKEN") or None,
        max_body_bytes=args.max_body_bytes,
        breaker_threshold=args.breaker_threshold,
        breaker_cooldown_s=args.breaker_cooldown_s,
    )
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=2048,
    )


if __name__ == "__main__":
    main()
