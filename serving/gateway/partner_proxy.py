"""The partner side of the gateway: fallback routes (``auto``) and partners by name.

Only a request whose ``model`` is not a local route reaches this code (see
:class:`~serving.gateway.proxy.Proxy`). A fallback route tries its available choices in
order: a partner through its adapter (:mod:`serving.partners.adapters`), a local entry
(``sovereign-lm``) through the local attempt plan; a partner name goes to that partner
alone. A partner attempt must reach its first token within the partner's
time-to-first-token deadline (see :mod:`serving.partners.health`), so a partner that hangs
costs at most that long, not its full timeout; a failure before that point is retried on the
next choice, one after it ends the stream with an OpenAI error event (``data: {"error":
...}``) and nothing else. A background task (:meth:`PartnerProxy.watch_partners`) probes
each partner on its interval and lets dwell times elapse without traffic.

Partners are remote HTTPS APIs answering in hundreds of milliseconds, so this path uses
``httpx2`` (TLS, proxies, HTTP/2-ready) rather than the hot path's loopback client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx2 as httpx
from starlette.responses import Response, StreamingResponse

from observability.tracing_http import http
from serving.errors import InvalidRequest, NotFound, Unavailable
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.proxy import Proxy
from serving.partners.health import parse_retry_after
from serving.partners.router import FallbackRoute, Partner, PartnerTable
from serving.partners.spec import Adapter, PartnerProtocolError, StreamTranslator

log = logging.getLogger(__name__)
# a partner's 4xx that says "this request", not "this partner": not held against its health
_REQUEST_REJECTED = frozenset({400, 413, 422})


class _AttemptFailed(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class PartnerProxy:
    def __init__(
        self,
        local: Proxy,
        partners: PartnerTable,
        metrics: GatewayMetrics,
        client: httpx.AsyncClient,
        adapter_for: Callable[[str], Adapter],
    ) -> None:
        self.local, self.partners, self.metrics = local, partners, metrics
        self.client, self.adapter_for = client, adapter_for
        self._timeouts: dict[float, httpx.Timeout] = {}
        self.tracing = http(__name__)

    def _timeout(self, seconds: float) -> httpx.Timeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._timeouts[seconds] = httpx.Timeout(seconds, connect=min(seconds, 2.0))
        return timeout

    async def forward(
        self, name: str, body: bytes, payload: dict, path: str, stream: bool
    ) -> Response:
        """A request whose ``model`` is not a local route: a fallback route or a partner."""
        fallback = self.partners.fallback_routes.get(name)
        if fallback is not None:
            return await self._fallback(fallback, body, payload, path, stream)
        partner = self.partners.partners.get(name)
        if partner is None:
            raise NotFound(f"The model `{name}` does not exist", "model", "model_not_found")
        if not partner.health.available():
            self.metrics.response(name, 503)
            raise Unavailable(
                f"partner `{name}` is not available ({partner.health.state.label}:"
                f" {partner.health.reason}); use a fallback route or retry later",
                "model",
                "partner_unavailable",
            )
        response = await self._partner(name, partner, payload, path, stream)
        if response is None:
            self.metrics.response(name, 503)
            raise Unavailable(
                f"partner `{name}` failed to answer; see /admin/partners",
                "model",
                "partner_failed",
            )
        self.metrics.response(name, response.status_code)
        return response

    async def _fallback(
        self, route: FallbackRoute, body: bytes, payload: dict, path: str, stream: bool
    ) -> Response:
        label, previous = route.name, None
        for entry in route.choices():
            partner = self.partners.partners.get(entry)
            if partner is not None:
                if not partner.health.available():
                    continue
                if previous is not None:
                    self.metrics.retry(label, previous, entry)
                previous = entry
                try:
                    response = await self._partner(label, partner, payload, path, stream)
                except InvalidRequest:
                    continue  # this partner's API cannot express the request; the next may
            else:
                local = self.local.table.routes.get(entry)
                if local is None:
                    continue
                outcome = await self.local.attempt_local(
                    label, local, body, payload, path, stream, previous
                )
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

    async def _partner(
        self, label: str, partner: Partner, payload: dict, path: str, stream: bool
    ) -> Response | None:
        """One attempt on a partner: the OpenAI answer, or None after a failure (recorded in
        its health and metrics). A stream is committed to only once its first token is in."""
        spec, health = partner.spec, partner.health
        adapter = self.adapter_for(spec.kind)
        outgoing = adapter.build(spec, path, payload)
        translator = adapter.stream(spec, path, payload) if stream else None
        self.metrics.attempt(label, spec.name)
        started = time.perf_counter()
        upstream: httpx.Response | None = None
        handed_over, kind = False, None
        span = self.tracing.client(f"partner {spec.name}")  # no traceparent leaves the house
        try:
            async with asyncio.timeout(health.first_token_deadline(spec.timeout_s)):
                upstream = await self.client.send(
                    self.client.build_request(
                        "POST",
                        outgoing.url,
                        json=outgoing.json,
                        headers=outgoing.headers,
                        timeout=self._timeout(spec.timeout_s),
                    ),
                    stream=True,
                )
                self._check_status(partner, upstream)
                if translator is not None:
                    head, chunks = await self._first_token(upstream, translator)
            if translator is None:
                answer = await upstream.aread()
                data = adapter.parse(spec, path, payload, upstream.status_code, answer)
                self._partner_ok(label, partner, started)
                return Response(json.dumps(data).encode(), media_type="application/json")
            if chunks is None:  # the whole stream ended before any token: a complete answer
                self._partner_ok(label, partner, started)
                return Response(b"".join(head), media_type="text/event-stream")
            handed_over = True
            relay = self._partner_relay(label, partner, upstream, chunks, translator, head, started)
            return StreamingResponse(relay, media_type="text/event-stream")
        except _AttemptFailed as exc:
            kind = exc.kind
        except (TimeoutError, httpx.TimeoutException):
            kind = "timeout"
        except httpx.HTTPError:
            kind = "connect" if upstream is None else "read"
        except PartnerProtocolError:
            kind = "malformed"
        finally:
            span.finish(upstream.status_code if upstream is not None else None, kind)
            if upstream is not None and not handed_over:
                await upstream.aclose()
        self._partner_failed(label, partner, kind)
        return None

    def _check_status(self, partner: Partner, upstream: httpx.Response) -> None:
        status = upstream.status_code
        if status < 400:
            return
        if status == 429:
            delay = parse_retry_after(upstream.headers.get("retry-after"), time.time())
            partner.health.rate_limited(delay)
            raise _AttemptFailed("status_429")
        if status in _REQUEST_REJECTED:
            raise _AttemptFailed("rejected")
        raise _AttemptFailed("status_5xx" if status >= 500 else "status_4xx")

    @staticmethod
    async def _first_token(
        upstream: httpx.Response, translator: StreamTranslator
    ) -> tuple[list[bytes], AsyncIterator[bytes] | None]:
        """Read until the translator has emitted a token. Returns the bytes so far and the
        rest of the stream, or (everything, None) when the stream ended first."""
        chunks = upstream.aiter_raw()
        head: list[bytes] = []
        async for chunk in chunks:
            head.append(translator.feed(chunk))
            if translator.started:
                return head, chunks
        head.append(translator.close())
        return head, None

    async def _partner_relay(
        self,
        label: str,
        partner: Partner,
        upstream: httpx.Response,
        chunks: AsyncIterator[bytes],
        translator: StreamTranslator,
        head: list[bytes],
        started: float,
    ) -> AsyncIterator[bytes]:
        try:
            for part in head:
                if part:
                    yield part
            async for chunk in chunks:
                out = translator.feed(chunk)
                if out:
                    yield out
            yield translator.close()
        except (httpx.HTTPError, PartnerProtocolError) as exc:
            kind = "malformed" if isinstance(exc, PartnerProtocolError) else "stream"
            self._partner_failed(label, partner, kind)
            yield _stream_error(partner.name)
            return
        finally:
            await upstream.aclose()
        self._partner_ok(label, partner, started)

    def _partner_ok(self, label: str, partner: Partner, started: float) -> None:
        elapsed = time.perf_counter() - started
        partner.health.success(elapsed)
        self.metrics.latency(label, partner.name, elapsed)

    def _partner_failed(self, label: str, partner: Partner, kind: str) -> None:
        if kind != "status_429" and kind != "rejected":
            partner.health.failure(kind)
        self.metrics.error(label, partner.name, kind)

    async def probe(self, partner: Partner) -> None:
        """One active health probe: the adapter's cheapest request; any 2xx JSON answer is
        a success (its latency is not recorded: a one-token answer says little)."""
        spec, health = partner.spec, partner.health
        outgoing = self.adapter_for(spec.kind).probe(spec)
        try:
            async with asyncio.timeout(health.first_token_deadline(spec.timeout_s)):
                response = await self.client.post(
                    outgoing.url,
                    json=outgoing.json,
                    headers=outgoing.headers,
                    timeout=self._timeout(spec.timeout_s),
                )
            if response.status_code == 429:
                health.rate_limited(
                    parse_retry_after(response.headers.get("retry-after"), time.time()), True
                )
                return
            if response.status_code >= 400:
                health.failure(f"probe_status_{response.status_code}", probe=True)
                return
            json.loads(response.content)
        except (TimeoutError, httpx.TimeoutException):
            health.failure("probe_timeout", probe=True)
        except httpx.HTTPError:
            health.failure("probe_connect", probe=True)
        except ValueError:
            health.failure("probe_malformed", probe=True)
        else:
            health.success(None, probe=True)

    async def watch_partners(self, tick_s: float = 0.1) -> None:
        """Background task: re-evaluate each partner's state (dwell times elapse without
        traffic) and start its active probe when one is due."""
        running: dict[str, asyncio.Task] = {}
        while True:
            try:
                for name, partner in list(self.partners.partners.items()):
                    partner.health.evaluate()
                    busy = name in running and not running[name].done()
                    if not busy and partner.health.probe_due(partner.spec.probe_interval_s):
                        running[name] = asyncio.create_task(self.probe(partner))
            except Exception:  # a bug here must not stop health checks for good
                log.exception("partner health watcher failed; continuing")
            await asyncio.sleep(tick_s)


def _stream_error(partner: str) -> bytes:
    error = {
        "message": f"partner `{partner}` broke off its answer after it had started;"
        " the answer above is incomplete, retry the request",
        "type": "partner_error",
        "param": None,
        "code": "stream_interrupted",
    }
    return f"data: {json.dumps({'error': error})}\n\n".encode()
