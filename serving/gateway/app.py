"""The gateway application: OpenAI front, admin API, metrics.

``POST /v1/completions`` and ``/v1/chat/completions`` are dispatched by a thin ASGI wrapper
straight to :class:`~serving.gateway.proxy.Proxy`, skipping routing and middleware (the hot
path is benchmarked); everything else goes to the FastAPI app. The
admin API under ``/admin`` needs ``Authorization: Bearer $MLOPS_GATEWAY_ADMIN_TOKEN``; with
no token configured it refuses every call rather than running open. Each admin change is
persisted before it is acknowledged, so an acknowledged change survives a restart.
"""

from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
from fastapi import Depends, FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from serving.errors import (
    InvalidRequest,
    ServingError,
    Unauthorized,
    error_response,
    install_error_handlers,
)
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.proxy import Proxy
from serving.gateway.routing import RoutingTable
from serving.gateway.state import StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    state_path: Path
    admin_token: str | None
    max_body_bytes: int = 1 << 20
    breaker_threshold: int = 3
    breaker_cooldown_s: float = 5.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.breaker_threshold < 1:
            raise ValueError(f"breaker_threshold must be >= 1, got {self.breaker_threshold}")


class BackendIn(BaseModel):
    url: str
    timeout_s: float = Field(default=30.0, gt=0)
    model: str | None = None


class RouteIn(BaseModel):
    stable: str
    canary: str | None = None
    canary_weight: float = Field(default=0.0, ge=0, le=100)


class WeightIn(BaseModel):
    canary_weight: float = Field(ge=0, le=100)


def create_app(config: GatewayConfig) -> GatewayASGI:
    table = RoutingTable(
        breaker_threshold=config.breaker_threshold, breaker_cooldown_s=config.breaker_cooldown_s
    )
    store = StateStore(config.state_path)
    table.load_dict(store.load())
    metrics = GatewayMetrics(table)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limits = httpx.Limits(
            max_connections=config.max_connections, max_keepalive_connections=config.max_connections
        )
        async with httpx.AsyncClient(limits=limits, http2=False) as client:
            app.state.proxy = Proxy(table, metrics, client, config.max_body_bytes)
            yield

    app = FastAPI(title="sovereign-mlops gateway", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.table = table

    install_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        now = int(time.time())
        data = [
            {"id": name, "object": "model", "created": now, "owned_by": "sovereign-mlops"}
            for name in table.routes
        ]
        return JSONResponse({"object": "list", "data": data})

    def authorize(request: Request) -> None:
        if not config.admin_token:
            raise Unauthorized("admin API disabled: set MLOPS_GATEWAY_ADMIN_TOKEN and restart")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token, config.admin_token):
            raise Unauthorized("missing or wrong admin token (Authorization: Bearer ...)")

    def state() -> dict:
        return {**table.to_dict(), "breakers": table.breakers()}

    def commit() -> dict:
        store.save(table.to_dict())
        return state()

    admin = [Depends(authorize)]

    @app.get("/admin/state", dependencies=admin)
    async def read_state() -> dict:
        return state()

    @app.put("/admin/backends/{name}", dependencies=admin)
    async def put_backend(name: str, body: BackendIn) -> dict:
        table.put_backend(name, body.url, body.timeout_s, body.model)
        return commit()

    @app.delete("/admin/backends/{name}", dependencies=admin)
    async def delete_backend(name: str) -> dict:
        table.remove_backend(name)
        return commit()

    @app.put("/admin/routes/{name}", dependencies=admin)
    async def put_route(name: str, body: RouteIn) -> dict:
        table.put_route(name, body.stable, body.canary, body.canary_weight)
        return commit()

    @app.post("/admin/routes/{name}/weight", dependencies=admin)
    async def set_weight(name: str, body: WeightIn) -> dict:
        route = table.routes.get(name)
        if route is None:
            raise InvalidRequest(f"no route named {name!r}", "name")
        table.put_route(name, route.stable, route.canary, body.canary_weight)
        return commit()

    return GatewayASGI(app)


class GatewayASGI:
    """Sends proxied OpenAI calls straight to the proxy; all else to the FastAPI app."""

    PROXIED = frozenset({"/v1/completions", "/v1/chat/completions"})

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in self.PROXIED
        ):
            await self.app(scope, receive, send)
            return
        try:
            response = await self.app.state.proxy.forward(Request(scope, receive))
        except ServingError as exc:
            response = error_response(exc)
        except Exception:  # never let one request take the connection down without an answer
            log.exception("proxy failed")
            response = error_response(ServingError("internal gateway error"))
        await response(scope, receive, send)
