"""A fake partner: a loopback server speaking one partner kind's real wire format.

Chaos and adapter tests need partners that fail on demand, so :class:`FakePartner` is a raw
ASGI app (raw so a stream can really be cut: returning mid-response makes uvicorn close the
socket without the terminal chunk) that answers the OpenAI, Anthropic Messages or Gemini
generateContent API, checks that kind's auth header, and validates the request as the real
API would (a missing ``max_tokens`` is a 400 for Anthropic), so an adapter mapping mistake
fails a test rather than passing silently.

The answer is ``partner:<name> says hi``, so a test can tell which partner answered (the
dialects and the answer live in :mod:`testing.partners.fake_wire`).

The failure mode is switched at runtime with ``POST /_control {"mode": ..., <params>}`` or
:meth:`FakePartner.set_mode`; ``GET /_control`` returns the mode, request counts and the last
request body; ``GET /health`` answers 200 whatever the mode (it says the process is up, not
that the partner API works). "Connection refused" is the server stopped (:meth:`FakePartnerServer.stop`).

    python -m testing.partners.fake --kind anthropic --port 9101 --name claude --key K
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from serving.partners.spec import KINDS
from testing.partners.fake_wire import WIRES, Answer, Ask, BadRequest, answer_for

MODES = (
    "ok",
    "error_500",
    "rate_limit",
    "hang",
    "slow_stream",
    "malformed_json",
    "cut_stream",
    "slow",
)
PARAM_DEFAULTS: dict[str, float] = {
    "retry_after_s": 1,  # rate_limit: the Retry-After header, in seconds
    "token_delay_s": 0.2,  # slow_stream: delay before each token
    "delay_s": 1.0,  # slow: delay before the answer
    "cut_after": 2,  # cut_stream: tokens sent before the connection is dropped
}

Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


class FakePartner:
    """The ASGI app: one partner of one kind, with a switchable failure mode."""

    def __init__(self, kind: str, name: str, key: str | None = None) -> None:
        if kind not in WIRES:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind, self.name, self.key = kind, name, key
        self.wire = WIRES[kind]()
        self.closing = False
        self._lock = threading.Lock()
        self._mode = "ok"
        self._params = dict(PARAM_DEFAULTS)
        self._counts = {"requests": 0, "streams": 0, "unauthorized": 0}
        self._last: dict | None = None

    def set_mode(self, mode: str, **params: float) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        unknown = set(params) - set(PARAM_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}; known: {list(PARAM_DEFAULTS)}")
        with self._lock:
            self._mode, self._params = mode, {**PARAM_DEFAULTS, **params}

    @property
    def mode(self) -> str:
        return self._mode

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)

    def last_request(self) -> dict | None:
        """The last partner-API request: path and JSON body (headers are not kept)."""
        with self._lock:
            return self._last

    def state(self) -> dict:
        with self._lock:
            return {
                "kind": self.kind,
                "name": self.name,
                "mode": self._mode,
                "params": dict(self._params),
                "counts": dict(self._counts),
                "last_request": self._last,
            }

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        path, method = scope["path"], scope["method"]
        if path == "/_control":
            await self._control(method, body, send)
            return
        if path == "/health":
            await _respond(send, 200, b'{"status": "ok"}')
            return
        route = self.wire.route(method, path, scope.get("query_string", b"").decode())
        if route is None:
            await _respond(send, 404, self.wire.error(404, f"no route {method} {path}"))
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        await self._serve(route, path, headers, body, receive, send)

    async def _serve(
        self, route: dict, path: str, headers: dict, body: bytes, receive: Receive, send: Send
    ) -> None:
        with self._lock:
            self._counts["requests"] += 1
            mode, params = self._mode, dict(self._params)
        if self.key is not None and not self.wire.authorized(headers, self.key):
            with self._lock:
                self._counts["unauthorized"] += 1
            await _respond(send, 401, self.wire.error(401, "invalid API key"))
            return
        try:
            problem = self.wire.header_problem(headers)
            if problem:
                raise BadRequest(problem)
            payload = json.loads(body)
            ask = self.wire.parse(route, payload)
        except (ValueError, BadRequest, AttributeError, TypeError) as exc:
            await _respond(send, 400, self.wire.error(400, f"invalid request: {exc}"))
            return
        with self._lock:
            self._last = {"path": path, "json": payload}
            self._counts["streams"] += ask.stream
        await self._answer(mode, params, route, payload, ask, receive, send)

    async def _answer(
        self, mode: str, params: dict, route: dict, payload: dict, ask: Ask, r: Receive, s: Send
    ) -> None:
        if mode == "error_500":
            await _respond(s, 500, self.wire.error(500, "internal error"))
        elif mode == "rate_limit":
            retry = [(b"retry-after", str(int(params["retry_after_s"])).encode())]
            await _respond(s, 429, self.wire.error(429, "rate limit exceeded"), retry)
        elif mode == "hang":
            await self._hang(r)
        elif mode == "malformed_json":
            await self._malformed(ask, s)
        else:
            await self._ok(mode, params, route, payload, ask, s)

    async def _ok(
        self, mode: str, params: dict, route: dict, payload: dict, ask: Ask, send: Send
    ) -> None:
        """The real answer, delayed (``slow``, ``slow_stream``) or cut (``cut_stream``)."""
        if mode == "slow":
            await asyncio.sleep(params["delay_s"])
        model = str(payload.get("model") or route.get("model"))
        answer = answer_for(self.name, ask)
        if ask.stream:
            await self._stream(mode, params, model, ask, answer, send)
            return
        full = json.dumps(self.wire.full(model, ask, answer)).encode()
        if mode == "cut_stream":
            await _start(send, 200, "application/json")
            await _chunk(send, full[:20])
            return  # uvicorn closes the socket mid-body
        if mode == "slow_stream":
            await asyncio.sleep(params["token_delay_s"] * len(answer.pieces))
        await _respond(send, 200, full)

    async def _stream(
        self, mode: str, params: dict, model: str, ask: Ask, answer: Answer, send: Send
    ) -> None:
        await _start(send, 200, "text/event-stream")
        for event in self.wire.stream_head(model, ask, answer):
            await _chunk(send, event)
        for sent, piece in enumerate(answer.pieces):
            if mode == "cut_stream" and sent >= params["cut_after"]:
                return  # uvicorn closes the socket: no terminal chunk, no terminal event
            if mode == "slow_stream":
                await asyncio.sleep(params["token_delay_s"])
            for index in range(ask.n):
                await _chunk(send, self.wire.stream_token(model, ask, piece, index))
        if mode == "cut_stream":
            return
        for event in self.wire.stream_tail(model, ask, answer):
            await _chunk(send, event)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _malformed(self, ask: Ask, send: Send) -> None:
        if ask.stream:
            await _start(send, 200, "text/event-stream")
            await _chunk(send, b'data: {"candidates": [{"content": \n\n')
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await _respond(send, 200, b'{"id": "broken", "choices": [')

    async def _hang(self, receive: Receive) -> None:
        """Never answer: wait until the client goes away or the server stops."""
        disconnected = asyncio.ensure_future(receive())
        while not disconnected.done() and not self.closing:
            await asyncio.sleep(0.05)
        disconnected.cancel()

    async def _control(self, method: str, body: bytes, send: Send) -> None:
        if method == "POST":
            try:
                request = json.loads(body or b"{}")
                if request.pop("reset_counts", False):
                    self.reset_counts()
                if "mode" in request:
                    self.set_mode(request.pop("mode"), **request)
                elif request:
                    raise ValueError("give a 'mode' with its parameters")
            except (ValueError, TypeError, AttributeError) as exc:
                await _respond(send, 400, json.dumps({"error": str(exc)}).encode())
                return
        elif method != "GET":
            await _respond(send, 405, b'{"error": "GET or POST"}')
            return
        await _respond(send, 200, json.dumps(self.state()).encode())


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _start(send: Send, status: int, ctype: str, extra: list | None = None) -> None:
    headers = [(b"content-type", ctype.encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _chunk(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _respond(send: Send, status: int, body: bytes, extra: list | None = None) -> None:
    await _start(send, status, "application/json", extra)
    await send({"type": "http.response.body", "body": body, "more_body": False})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakePartnerServer:
    """A :class:`FakePartner` served by uvicorn in a background thread on loopback.

    ``stop`` closes the listening socket (clients then get connection refused) and ``start``
    serves again on the same port, with the same mode and counts.
    """

    def __init__(
        self, kind: str, name: str, key: str | None = None, port: int | None = None
    ) -> None:
        self.app = FakePartner(kind, name, key)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """What a :class:`PartnerSpec` of this kind takes as ``base_url``."""
        return f"{self.url}/v1" if self.app.kind == "openai" else self.url

    def start(self, timeout_s: float = 20.0) -> FakePartnerServer:
        import uvicorn

        if self._thread is not None:
            raise RuntimeError(f"fake partner {self.app.name!r} is already running")
        self.app.closing = False
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._thread = None
                raise RuntimeError(f"fake partner could not listen on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self.app.closing = True
        self._server.should_exit = True
        self._thread.join(10)
        self._thread = None

    def set_mode(self, mode: str, **params: float) -> None:
        self.app.set_mode(mode, **params)

    def counts(self) -> dict[str, int]:
        return self.app.counts()

    def __enter__(self) -> FakePartnerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--name", required=True, help="partner name, part of every answer")
    parser.add_argument("--key", help="the API key clients must send (unchecked when absent)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--mode", choices=MODES, default="ok")
    args = parser.parse_args(argv)
    app = FakePartner(args.kind, args.name, args.key)
    app.set_mode(args.mode)
    uvicorn.run(app, host=args.host, port=args.port, lifespan="off", timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
