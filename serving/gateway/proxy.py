"""The proxy hot path: the dispatcher in front of the local and the partner proxy.

Kept lean on purpose (it is benchmarked). ``POST /v1/completions`` and
``/v1/chat/completions`` come here as raw ASGI: the body is read once under the size limit
and parsed once to find ``model`` and ``stream``, the client's API key is checked and
charged, and the request goes to one of two proxies that know nothing of each other:

* a local route -> :class:`~serving.gateway.local_proxy.LocalProxy` (its attempt plan over
  the sovereign engines, answered straight to ASGI ``send``);
* a fallback route (``auto``) -> its choices in order, each a partner through
  :class:`~serving.gateway.partner_proxy.PartnerProxy` or a local route through the local
  proxy, until one answers;
* a partner by name -> the partner proxy alone.

Without Starlette ``Request``/``Response`` objects on the local path, it costs about 60 µs
of CPU per request on the development VM, against 730-980 µs with ``httpx2`` and Starlette
(``benchmarks/gateway_components.py`` splits the cost by component). Errors become the
OpenAI error shape here, in one place.
"""

from __future__ import annotations

import contextlib
import json
import logging

from starlette.responses import Response

from observability.logs import REQUEST_ID_HEADER, request_id_from, request_id_var
from serving.disconnect import ClientGone, unless_gone
from serving.errors import (
    InvalidRequest,
    NotFound,
    Overloaded,
    RequestTooLarge,
    ServingError,
    Unavailable,
)
from serving.gateway import asgi_io
from serving.gateway.keys import ClientKey, KeyTable
from serving.gateway.local_proxy import LocalOutcome, LocalProxy
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.partner_proxy import PartnerProxy
from serving.gateway.routing import RoutingTable
from serving.gateway.upstream import UpstreamPool
from serving.partners.router import FallbackRoute

log = logging.getLogger(__name__)


class Proxy:
    """ASGI app for the proxied POST routes; every other path stays with the main app."""

    def __init__(
        self,
        table: RoutingTable,
        metrics: GatewayMetrics,
        pool: UpstreamPool,
        max_body_bytes: int,
        partners: PartnerProxy | None = None,
        keys: KeyTable | None = None,
    ) -> None:
        self.local = LocalProxy(table, metrics, pool)
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.partners = partners
        self.keys = keys

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # no lifespan of its own: the pool's owner closes it
            return
        try:
            await self.forward(scope, receive, send)
        except ClientGone:
            return
        except ServingError as exc:
            extra = (
                ((b"retry-after", exc.retry_after.encode()),) if isinstance(exc, Overloaded) else ()
            )
            body = asgi_io.error_bytes(exc)
            await asgi_io.respond(
                send, exc.status_code, asgi_io.JSON, body, asgi_io.request_id(), extra
            )
        except Exception:  # never let one request take the connection down without an answer
            log.exception("proxy failed")
            error = asgi_io.error_bytes(ServingError("internal gateway error"))
            await asgi_io.respond(send, 500, asgi_io.JSON, error, asgi_io.request_id())

    async def forward(self, scope, receive, send) -> None:
        body, caller_id, authorization = await self._read_body(scope, receive)
        rid = request_id_from(caller_id)
        request_id_var.set(rid)  # each request runs in its own task: log lines carry it
        key = None
        if self.keys is not None and self.keys.required:
            key = self._authenticate(authorization)
        payload = asgi_io.parse_request(body)
        name = payload["model"]
        stream = payload.get("stream") is True
        route = self.local.table.routes.get(name)
        if route is None:
            call = asgi_io.Call(body, payload, scope["path"], stream)
            response = await self._remote(name, call)
            if key is not None:
                self._charge(key, payload, stream, getattr(response, "body", None))
            response.headers[REQUEST_ID_HEADER] = rid
            await response(scope, receive, send)
            return
        call = asgi_io.Call(body, payload, scope["path"], stream, rid)
        outcome = await unless_gone(receive, self.local.attempt_local(name, route, call, None))
        if key is not None:
            self._charge_local(key, payload, outcome)
        await self.local.send_outcome(receive, send, name, outcome)

    async def _remote(self, name: str, call: asgi_io.Call) -> Response:
        """A ``model`` that is not a local route: a fallback route or a partner."""
        if self.partners is not None:
            fallback = self.partners.table.fallback_routes.get(name)
            if fallback is not None:
                return await self._fallback(fallback, call)
            if name in self.partners.table.partners:
                return await self.partners.forward(name, call)
        raise NotFound(f"The model `{name}` does not exist", "model", "model_not_found")

    async def _fallback(self, route: FallbackRoute, call: asgi_io.Call) -> Response:
        """The route's choices in order until one answers: a partner through the partner
        proxy (skipped while unavailable), a local route through its attempt plan."""
        label, previous = route.name, None
        for entry in route.choices():
            partner = self.partners.table.partners.get(entry)
            if partner is not None:
                if not partner.health.available():
                    continue
                if previous is not None:
                    self.metrics.retry(label, previous, entry)
                previous = entry
                try:
                    response = await self.partners.attempt(label, partner, call)
                except InvalidRequest:
                    continue  # this partner's API cannot express the request; the next may
            else:
                local = self.local.table.routes.get(entry)
                if local is None:
                    continue
                outcome = await self.local.attempt_local(label, local, call, previous)
                previous = outcome.previous
                response = self.local.as_response(label, outcome)
            if response is not None:
                self.metrics.response(label, response.status_code)
                return response
        self.metrics.response(label, 503)
        raise Unavailable(
            f"no choice of `{label}` could answer ({', '.join(route.choices())}); retry shortly",
            "model",
            "backend_unavailable",
        )

    def _authenticate(self, authorization: bytes | None) -> ClientKey:
        try:
            key = self.keys.authenticate(authorization)
        except Overloaded:
            name = self.keys.name_of(authorization)
            self.metrics.key_rejected(name, "quota")
            raise
        self.metrics.key_request(key.name)
        return key

    def _charge_local(self, key: ClientKey, payload: dict, outcome: LocalOutcome) -> None:
        if outcome.stream is not None:
            self._charge(key, payload, True, None)
        elif outcome.answer is not None and outcome.answer[0] == 200:
            self._charge(key, payload, False, outcome.answer[2])

    def _charge(self, key: ClientKey, payload: dict, stream: bool, body: bytes | None) -> None:
        """Tokens against the key's quota: the answer's usage, or for a stream (not parsed
        here) its ``max_tokens`` times ``n``, the most it can cost."""
        tokens = 0
        if not stream and body:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                tokens = int(json.loads(body)["usage"]["total_tokens"])
        else:
            limit = payload.get("max_tokens") or payload.get("max_completion_tokens") or 16
            n = payload.get("n") or 1
            if isinstance(limit, int) and isinstance(n, int):
                tokens = limit * n
        key.charge_tokens(self.keys.clock(), tokens)
        self.metrics.key_tokens(key.name, tokens)

    async def _read_body(self, scope, receive) -> tuple[bytes, str | None, bytes | None]:
        """The body under the size limit, the caller's request id and authorization headers."""
        limit, caller_id, authorization = self.max_body_bytes, None, None
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                raise RequestTooLarge(f"request body over the {limit}-byte limit")
            if key == asgi_io.RID:
                caller_id = value.decode("latin-1")
            elif key == b"authorization":
                authorization = value
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"request body over the {limit}-byte limit")
            if not message.get("more_body", False):
                if not chunks:
                    return chunk, caller_id, authorization
                chunks.append(chunk)
                return b"".join(chunks), caller_id, authorization
            chunks.append(chunk)
