"""HTTP layer of the embedded engine: vLLM's OpenAI-compatible API over any :class:`Engine`.

Handlers are thin: parse the pydantic request, call the engine, shape the answer. Every
failure goes through :func:`serving.errors.error_response`, so clients always get the OpenAI
error shape. The first item of a generation is awaited before a streaming response starts,
so a request the engine rejects gets a proper 400 instead of a broken event stream.
Metrics use vLLM's names so dashboards built for vLLM read this engine unchanged.
``/health`` is liveness, as vLLM's is: the process is up and its event loop turns, so it
answers however busy the engine is (tokenization and chat templating run off this loop).
``/ready`` is readiness: 200 while the engine can take more work, 503 while its queue is
nearly full. A request the queue cannot take gets 429 with ``Retry-After`` at once, and one
whose client goes away while it waits is dropped.
Every request gets an id (the caller's ``x-request-id`` or a new one), echoed in the
response header and carried by every log line of that request, and one access log line.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.responses import JSONResponse, Response, StreamingResponse

from observability.asgi import RequestLogMiddleware
from serving.disconnect import ClientGone, unless_gone
from serving.engine import api, echo
from serving.engine.chat_template import render_chat
from serving.engine.protocol import ChoiceDelta, Engine, SamplingParams, Usage
from serving.errors import (
    NotFound,
    Overloaded,
    ServingError,
    error_response,
    install_error_handlers,
    status_error_response,
)


class InFlightLimit:
    """ASGI front door: at most ``limit`` generation requests in the process, the rest shed
    with 429 before their body is even parsed. Under overload the event loop itself is the
    scarce resource, and requests waiting to be parsed would otherwise queue without bound
    ahead of the engine's own admission control."""

    PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit, self.in_flight = app, limit, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            response = error_response(
                Overloaded(f"the engine has {self.in_flight} requests in hand; retry shortly")
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry, engine: Engine) -> None:
        name = engine.served_model_name
        labels = ["model_name"]
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency",
            labels,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        ).labels(name)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token",
            labels,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        ).labels(name)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prefill tokens processed", labels, registry=registry
        ).labels(name)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generation tokens processed", labels, registry=registry
        ).labels(name)
        self.requests = Counter(
            "vllm:request_success",
            "Finished requests",
            labels + ["finished_reason"],
            registry=registry,
        )
        running = Gauge(
            "vllm:num_requests_running", "Requests in the running batch", labels, registry=registry
        ).labels(name)
        running.set_function(lambda: engine.load().running)
        waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests waiting to be scheduled",
            labels,
            registry=registry,
        ).labels(name)
        waiting.set_function(lambda: engine.load().waiting)


def create_app(
    engine: Engine,
    default_max_tokens: int = 16,
    registry: CollectorRegistry | None = None,
    max_in_flight: int = 1024,
) -> FastAPI:
    registry = registry or CollectorRegistry()
    metrics = EngineMetrics(registry, engine)
    # spans come from observability.tracing_http alone (FastAPI's own would split the trace)
    app = FastAPI(
        title="sovereign-mlops engine", docs_url=None, redoc_url=None, telemetry={"tracing": False}
    )
    created = int(time.time())

    install_error_handlers(app)
    app.add_middleware(RequestLogMiddleware, logger="serving.engine.access")
    app.add_middleware(InFlightLimit, limit=max_in_flight)

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; closes the exchange

    @app.get("/health")
    async def health() -> Response:
        if not engine.ready():
            return status_error_response(503, "engine not ready")
        return Response(status_code=200)

    @app.get("/ready")
    async def ready() -> Response:
        accepting = getattr(engine, "accepting", engine.ready)
        if not accepting():
            return status_error_response(503, "engine busy: its queue is nearly full")
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> api.ModelList:
        card = api.ModelCard(
            id=engine.served_model_name, created=created, root=engine.served_model_name
        )
        return api.ModelList(data=[card])

    def check_model(model: str) -> None:
        if model != engine.served_model_name:
            raise NotFound(
                f"The model `{model}` does not exist; this engine serves "
                f"`{engine.served_model_name}`",
                "model",
                "model_not_found",
            )

    async def start(prompt: str | list[int], params: SamplingParams):
        started = time.perf_counter()
        stream = engine.generate(prompt, params)
        first = await anext(stream)
        metrics.ttft.observe(time.perf_counter() - started)
        return started, first, stream

    def account(started: float, usage: Usage, reasons: list[str | None]) -> None:
        metrics.e2e.observe(time.perf_counter() - started)
        metrics.prompt_tokens.inc(usage.prompt_tokens)
        metrics.generation_tokens.inc(usage.completion_tokens)
        for reason in reasons:
            metrics.requests.labels(engine.served_model_name, reason or "abort").inc()

    async def collect(first, stream) -> tuple[dict[int, list[str]], dict[int, str | None], Usage]:
        texts: dict[int, list[str]] = {}
        reasons: dict[int, str | None] = {}
        item = first
        while True:
            if isinstance(item, Usage):
                return texts, reasons, item
            texts.setdefault(item.index, []).append(item.text)
            if item.finish_reason is not None:
                reasons[item.index] = item.finish_reason
            item = await anext(stream)

    @app.post("/v1/completions")
    async def completions(body: api.CompletionRequest, request: Request) -> Response:
        check_model(body.model)
        echo.check_supported(body)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.scores_prompt_only:
            started = time.perf_counter()
            choice, prompt_tokens = await echo.score_prompt(engine, body, body.single_prompt())
            account(started, Usage(prompt_tokens, 0), [choice.finish_reason])
            usage = api.UsageInfo.of(Usage(prompt_tokens, 0))
            scored = api.CompletionResponse(
                id=rid, created=now, model=body.model, choices=[choice], usage=usage
            )
            return JSONResponse(scored.model_dump())
        params = body.sampling(default_max_tokens)
        started, first, stream = await unless_gone(
            request.receive, start(body.single_prompt(), params)
        )
        if body.stream:

            def chunk(delta: ChoiceDelta) -> dict:
                choice = {
                    "index": delta.index,
                    "text": delta.text,
                    "logprobs": None,
                    "finish_reason": delta.finish_reason,
                }
                return {
                    "id": rid,
                    "object": "text_completion",
                    "created": now,
                    "model": body.model,
                    "choices": [choice],
                }

            return sse(first, stream, chunk, rid, now, body, started, "text_completion")
        texts, reasons, usage = await unless_gone(request.receive, collect(first, stream))
        account(started, usage, list(reasons.values()))
        choices = [
            api.CompletionChoice(
                index=i,
                text=(body.single_prompt() if body.echo else "") + "".join(texts.get(i, [])),
                finish_reason=reasons.get(i),
            )
            for i in range(params.n)
        ]
        response = api.CompletionResponse(
            id=rid, created=now, model=body.model, choices=choices, usage=api.UsageInfo.of(usage)
        )
        return JSONResponse(response.model_dump())

    @app.post("/v1/chat/completions")
    async def chat_completions(body: api.ChatCompletionRequest, request: Request) -> Response:
        check_model(body.model)
        params = body.sampling(default_max_tokens)
        messages = [(m.role, m.text()) for m in body.messages]
        # templating a long conversation is CPU work: off the loop that answers /health
        tokenizer = getattr(engine, "tokenizer", None)
        prompt = await asyncio.to_thread(render_chat, messages, tokenizer)
        started, first, stream = await unless_gone(request.receive, start(prompt, params))
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            greeted: set[int] = set()

            def chunk(delta: ChoiceDelta) -> dict:
                message = {"content": delta.text}
                if delta.index not in greeted:
                    greeted.add(delta.index)
                    message["role"] = "assistant"
                choice = {
                    "index": delta.index,
                    "delta": message,
                    "finish_reason": delta.finish_reason,
                }
                return {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": now,
                    "model": body.model,
                    "choices": [choice],
                }

            return sse(first, stream, chunk, rid, now, body, started, "chat.completion.chunk")
        texts, reasons, usage = await unless_gone(request.receive, collect(first, stream))
        account(started, usage, list(reasons.values()))
        choices = [
            api.ChatChoice(
                index=i,
                message=api.AssistantMessage(content="".join(texts.get(i, []))),
                finish_reason=reasons.get(i),
            )
            for i in range(params.n)
        ]
        response = api.ChatCompletionResponse(
            id=rid, created=now, model=body.model, choices=choices, usage=api.UsageInfo.of(usage)
        )
        return JSONResponse(response.model_dump())

    def sse(
        first,
        stream,
        chunk: Callable[[ChoiceDelta], dict],
        rid: str,
        now: int,
        body: api._Sampling,
        started: float,
        kind: str,
    ) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            item, reasons = first, []
            try:
                while not isinstance(item, Usage):
                    if item.finish_reason is not None:
                        reasons.append(item.finish_reason)
                    yield b"data: " + json.dumps(chunk(item)).encode() + b"\n\n"
                    item = await anext(stream)
            except ServingError as exc:
                error = {
                    "error": {
                        "message": exc.message,
                        "type": exc.error_type,
                        "param": exc.param,
                        "code": exc.code,
                    }
                }
                yield b"data: " + json.dumps(error).encode() + b"\n\n"
                return
            account(started, item, reasons)
            if body.include_usage:
                usage = {
                    "id": rid,
                    "object": kind,
                    "created": now,
                    "model": body.model,
                    "choices": [],
                    "usage": api.UsageInfo.of(item).model_dump(),
                }
                yield b"data: " + json.dumps(usage).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
