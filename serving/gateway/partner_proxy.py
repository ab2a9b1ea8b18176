"""The partner proxy: one attempt on a commercial partner API, and its health probes.

The dispatcher (:class:`~serving.gateway.proxy.Proxy`) sends here a request naming a
partner, and each partner choice of a fallback route (``auto``); this module knows nothing
of local routes. An attempt goes through the partner's adapter
(:mod:`serving.partners.adapters`) and must reach its first token within the partner's
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
from serving.errors import Unavailable
from serving.gateway.asgi_io import Call
from serving.gateway.metrics import GatewayMetrics
from serving.partners.health import parse_retry_after
from serving.partners.router import Partner, PartnerTable
from serving.partners.spec import Adapter, PartnerProtocolError, StreamTranslator

log = logging.getLogger(__name__)
# a partner's 4xx that says "this request", not "this partner": not held against its health
_REQUEST_REJECTED = frozenset({400, 413, 422})


class _AttemptFailed(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class PartnerProxy:
    """Sends OpenAI requests to partner APIs through their adapters and keeps their health."""

    def __init__(
        self,
        table: PartnerTable,
        metrics: GatewayMetrics,
        client: httpx.AsyncClient,
        adapter_for: Callable[[str], Adapter],
    ) -> None:
        self.table, self.metrics = table, metrics
        self.client, self.adapter_for = client, adapter_for
        self._timeouts: dict[float, httpx.Timeout] = {}
        self.tracing = http(__name__)

    def _timeout(self, seconds: float) -> httpx.Timeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._timeouts[seconds] = httpx.Timeout(seconds, connect=min(seconds, 2.0))
        return timeout

    async def forward(self, name: str, call: Call) -> Response:
        """A request for partner ``name`` alone (a fallback route goes through the
        dispatcher, which calls :meth:`attempt` for its partner choices)."""
        partner = self.table.partners[name]
        if not partner.health.available():
            self.metrics.response(name, 503)
            raise Unavailable(
                f"partner `{name}` is not available ({partner.health.state.label}:"
                f" {partner.health.reason}); use a fallback route or retry later",
                "model",
                "partner_unavailable",
            )
        response = await self.attempt(name, partner, call)
        if response is None:
            self.metrics.response(name, 503)
            raise Unavailable(
                f"partner `{name}` failed to answer; see /admin/partners",
                "model",
                "partner_failed",
            )
        self.metrics.response(name, response.status_code)
        return response

    async def attempt(self, label: str, partner: Partner, call: Call) -> Response | None:
        """One attempt on a partner: the OpenAI answer, or None after a failure (recorded in
        its health and metrics). A stream is committed to only once its first token is in."""
        spec, health = partner.spec, partner.health
        path, payload = call.path, call.payload
        adapter = self.adapter_for(spec.kind)
        outgoing = adapter.build(spec, path, payload)
        translator = adapter.stream(spec, path, payload) if call.stream else None
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
                for name, partner in list(self.table.partners.items()):
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
