"""The gateway application: OpenAI front, admin API, metrics, partner health watcher.

``POST /v1/completions`` and ``/v1/chat/completions`` are dispatched by a thin ASGI wrapper
straight to :class:`~serving.gateway.proxy.Proxy`, skipping routing and middleware (the hot
path is benchmarked); everything else goes to the FastAPI app. The
admin API under ``/admin`` needs ``Authorization: Bearer $MLOPS_GATEWAY_ADMIN_TOKEN``; with
no token configured it refuses every call rather than running open. Each admin change is a
transaction on the latest stored state (``shared_state.py``: a file, or PostgreSQL shared by
every replica) and is persisted before it is acknowledged, so an acknowledged change
survives a restart and reaches every replica; with the store unreachable it is a 503. Every
name in an admin path (backend, route, partner, fallback route) must match
:data:`~serving.gateway.routing.NAME_RULE`; anything else is a 400 quoting the rule (the
paths take the rest of the URL, newlines included, as the name, so an encoded ``/`` or
``\n`` reaches that check too).

Client API keys (``/admin/keys``, see ``keys.py``) live in the same state, hashed;
``require_api_keys`` turns them on for every OpenAI call.

Partners and fallback routes (``/admin/partners``, ``/admin/fallback-routes``) live in the
same state as backends and routes. At start the gateway restores that state, then
upserts what the serving config declares (pins and admin-API additions stay). A background
task started in the lifespan probes partners and re-evaluates their health.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
from fastapi import Depends, FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import JSONResponse, Response

from serving.errors import (
    InvalidRequest,
    Unauthorized,
    install_error_handlers,
)
from serving.gateway.keys import KeyTable
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.partner_proxy import PartnerProxy
from serving.gateway.proxy import Proxy
from serving.gateway.routing import RoutingTable, check_name
from serving.gateway.shared_state import SharedState, SyncPolicy, open_state_store
from serving.gateway.upstream import UpstreamPool
from serving.partners.adapters import adapter_for
from serving.partners.config import ServingConfig
from serving.partners.health import HealthPolicy
from serving.partners.router import PartnerTable
from serving.partners.spec import PartnerSpec

log = logging.getLogger(__name__)


class _AnyName(Convertor):
    """A path parameter taking the rest of the path, even ``/`` and newlines (Starlette's
    ``path`` stops at a newline), so every name sent reaches :func:`check_name`."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("admin_name", _AnyName())


@dataclass(frozen=True)
class GatewayConfig:
    state_path: Path
    admin_token: str | None
    state_url: str | None = None  # postgresql://...: state shared by replicas; else the file
    state_table: str = "gateway_state"
    state_schema: str = "public"
    advertise_url: str | None = None  # this process' private URL for the replica registry
    sync: SyncPolicy = field(default_factory=SyncPolicy)
    max_body_bytes: int = 1 << 20
    breaker_threshold: int = 3
    breaker_cooldown_s: float = 5.0
    max_connections: int = 512
    max_concurrency_per_backend: int = 256  # in-flight requests; more are shed with 429
    require_api_keys: bool = False  # the secure path: every OpenAI call needs a client key
    serving_config: ServingConfig | None = None
    partner_policy: HealthPolicy = field(default_factory=HealthPolicy)

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_concurrency_per_backend < 1:
            raise ValueError(
                f"max_concurrency_per_backend must be >= 1, got {self.max_concurrency_per_backend}"
            )
        if self.breaker_threshold < 1:
            raise ValueError(f"breaker_threshold must be >= 1, got {self.breaker_threshold}")


class BackendIn(BaseModel):
    url: str
    timeout_s: float = Field(default=30.0, gt=0)
    model: str | None = None
    max_concurrency: int | None = Field(default=None, ge=1, le=100_000)


class RouteIn(BaseModel):
    stable: str
    canary: str | None = None
    canary_weight: float = Field(default=0.0, ge=0, le=100)


class WeightIn(BaseModel):
    canary_weight: float = Field(ge=0, le=100)


class FallbackRouteIn(BaseModel):
    order: list[str] = Field(min_length=1)


class KeyIn(BaseModel):
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class PinIn(BaseModel):
    target: str
    reason: str = Field(min_length=1)


def _partner_spec(name: str, body: dict) -> PartnerSpec:
    try:
        return PartnerSpec.from_dict(name, body)
    except TypeError as exc:
        raise InvalidRequest(f"partner {name!r}: bad field value ({exc})", "partner") from None


def _apply_config(partners: PartnerTable, config: ServingConfig) -> None:
    for spec in config.partners.values():
        partners.put_partner(spec)
    for name, order in config.fallback_routes.items():
        partners.put_fallback_route(name, order, lenient=True)


def create_app(config: GatewayConfig) -> GatewayASGI:
    table = RoutingTable(
        breaker_threshold=config.breaker_threshold,
        breaker_cooldown_s=config.breaker_cooldown_s,
        max_concurrency=config.max_concurrency_per_backend,
    )
    partners = PartnerTable(table, config.partner_policy)
    keys = KeyTable(required=config.require_api_keys)
    store = open_state_store(
        config.state_url, config.state_path, config.state_table, config.state_schema
    )
    shared = SharedState(store, table, partners, keys, config.advertise_url, config.sync)
    serving_config = config.serving_config
    shared.load(
        None if serving_config is None else lambda _t, p, _k: _apply_config(p, serving_config)  # type: ignore[arg-type]
    )
    metrics = GatewayMetrics(table, partners=partners)
    metrics.registry.register(shared.collector())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limits = httpx.Limits(
            max_connections=config.max_connections, max_keepalive_connections=config.max_connections
        )
        pool = UpstreamPool(max_connections=config.max_connections)
        shared.start(asyncio.get_running_loop())
        async with httpx.AsyncClient(limits=limits, http2=False) as client:
            partner_proxy = PartnerProxy(partners, metrics, client, adapter_for)
            app.state.proxy = Proxy(
                table, metrics, pool, config.max_body_bytes, partners=partner_proxy, keys=keys
            )
            watcher = asyncio.create_task(partner_proxy.watch_partners())
            try:
                yield
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                await pool.aclose()
                await asyncio.to_thread(shared.stop)

    app = FastAPI(
        title="sovereign-mlops gateway",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        telemetry={"tracing": False},  # spans come from observability.tracing_http alone
    )

    install_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Always 200 while the process serves: a stale state still serves traffic."""
        return JSONResponse(shared.health())

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        if keys.required:
            keys.authenticate(request.headers.get("authorization", "").encode("latin-1"))
        now = int(time.time())
        names = [*table.routes, *partners.fallback_routes, *partners.partners]
        data = [
            {"id": name, "object": "model", "created": now, "owned_by": "sovereign-mlops"}
            for name in names
        ]
        return JSONResponse({"object": "list", "data": data})

    def authorize(request: Request) -> None:
        if not config.admin_token:
            raise Unauthorized("admin API disabled: set MLOPS_GATEWAY_ADMIN_TOKEN and restart")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token, config.admin_token):
            raise Unauthorized("missing or wrong admin token (Authorization: Bearer ...)")

    def state() -> dict:
        return {
            **table.to_dict(),
            **partners.to_dict(),
            "breakers": table.breakers(),
            "version": shared.version,
        }

    async def commit(op) -> dict:
        await shared.change(op)
        return state()

    async def commit_partners(op) -> dict:
        await shared.change(op)
        return partners.status()

    admin = [Depends(authorize)]

    @app.get("/admin/state", dependencies=admin)
    async def read_state() -> dict:
        return state()

    @app.get("/admin/replicas", dependencies=admin)
    async def read_replicas() -> dict:
        """Live gateway processes sharing this state, each with its private URL."""
        return {"self": shared.replica_id, "replicas": await shared.replicas()}

    @app.put("/admin/backends/{name:admin_name}", dependencies=admin)
    async def put_backend(name: str, body: BackendIn) -> dict:
        check_name(name, "backend name")
        return await commit(
            lambda t, _p, _k: t.put_backend(
                name, body.url, body.timeout_s, body.model, body.max_concurrency
            )
        )

    @app.delete("/admin/backends/{name:admin_name}", dependencies=admin)
    async def delete_backend(name: str) -> dict:
        return await commit(lambda t, _p, _k: t.remove_backend(name))

    @app.put("/admin/routes/{name:admin_name}", dependencies=admin)
    async def put_route(name: str, body: RouteIn) -> dict:
        check_name(name, "route name")

        def op(t: RoutingTable, p: PartnerTable, _k) -> None:
            taken = p.names_in_use(name)
            if taken not in (None, "local route"):
                raise InvalidRequest(f"{name!r} is already a {taken}; pick another name", "name")
            t.put_route(name, body.stable, body.canary, body.canary_weight)

        return await commit(op)

    @app.delete("/admin/routes/{name}", dependencies=admin)
    async def delete_route(name: str) -> dict:
        return await commit(lambda t, _p, _k: t.remove_route(name))

    @app.post("/admin/routes/{name}/weight", dependencies=admin)
    async def set_weight(name: str, body: WeightIn) -> dict:
        def op(t: RoutingTable, _p, _k) -> None:
            route = t.routes.get(name)
            if route is None:
                raise InvalidRequest(f"no route named {name!r}", "name")
            t.put_route(name, route.stable, route.canary, body.canary_weight)

        return await commit(op)

    @app.get("/admin/keys", dependencies=admin)
    async def read_keys() -> dict:
        return keys.status()

    @app.post("/admin/keys/{name:admin_name}", dependencies=admin)
    async def create_key(name: str, body: KeyIn) -> dict:
        """A new key for ``name`` (replacing any old one); the key is shown only here."""
        check_name(name, "key name")
        secret = await shared.change(lambda _t, _p, k: k.create(name, body.rpm, body.tpm))
        return {"name": name, "key": secret, **keys.status()["keys"][name]}

    @app.delete("/admin/keys/{name:admin_name}", dependencies=admin)
    async def delete_key(name: str) -> dict:
        await shared.change(lambda _t, _p, k: k.remove(name))
        return keys.status()

    @app.get("/admin/partners", dependencies=admin)
    async def read_partners() -> dict:
        return partners.status()

    @app.put("/admin/partners/{name:admin_name}", dependencies=admin)
    async def put_partner(name: str, body: dict) -> dict:
        check_name(name, "partner name")
        spec = _partner_spec(name, body)
        return await commit_partners(lambda _t, p, _k: p.put_partner(spec))

    @app.delete("/admin/partners/{name:admin_name}", dependencies=admin)
    async def delete_partner(name: str) -> dict:
        return await commit_partners(lambda _t, p, _k: p.remove_partner(name))

    @app.put("/admin/fallback-routes/{name:admin_name}", dependencies=admin)
    async def put_fallback_route(name: str, body: FallbackRouteIn) -> dict:
        check_name(name, "fallback route name")
        return await commit_partners(lambda _t, p, _k: p.put_fallback_route(name, body.order))

    @app.post("/admin/fallback-routes/{name}/pin", dependencies=admin)
    async def pin(name: str, body: PinIn) -> dict:
        view = await commit_partners(lambda _t, p, _k: p.pin(name, body.target, body.reason))
        log.warning("fallback route %s pinned to %s: %s", name, body.target, body.reason)
        return view

    @app.delete("/admin/fallback-routes/{name}/pin", dependencies=admin)
    async def unpin(name: str) -> dict:
        view = await commit_partners(lambda _t, p, _k: p.unpin(name))
        log.warning("fallback route %s unpinned", name)
        return view

    return GatewayASGI(app)


class GatewayASGI:
    """Sends proxied OpenAI calls straight to the proxy; all else to the FastAPI app."""

    PROXIED = frozenset({"/v1/completions", "/v1/chat/completions"})

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in self.PROXIED
        ):
            await self.app(scope, receive, send)
            return
        await self.app.state.proxy(scope, receive, send)
