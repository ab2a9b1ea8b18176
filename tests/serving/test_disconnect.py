"""Contract: a client that goes away stops the work done for it, in the engine's HTTP layer
(a real uvicorn server and a raw socket that closes mid-request) and in the helper the
engine and the gateway share."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator

import pytest

from serving.disconnect import ClientGone, unless_gone
from serving.engine.app import create_app
from serving.engine.protocol import ChoiceDelta, EngineLoad, SamplingParams, Usage


class WaitingEngine:
    """Holds every generation until released; records when one was abandoned."""

    served_model_name = "waiting"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.abandoned = threading.Event()
        self.release = asyncio.Event()

    def ready(self) -> bool:
        return True

    def load(self) -> EngineLoad:
        return EngineLoad(running=0, waiting=0)

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncIterator:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.abandoned.set()
            raise
        yield ChoiceDelta(0, "late", "stop")
        yield Usage(prompt_tokens=1, completion_tokens=1)


def test_engine_abandons_the_generation_of_a_client_that_closed(helpers, caplog):
    caplog.set_level(logging.INFO, logger="serving.engine.access")
    engine = WaitingEngine()
    with helpers.ThreadServer(create_app(engine)) as server:
        body = json.dumps({"model": "waiting", "prompt": "hi", "max_tokens": 4}).encode()
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(head + body)
            assert engine.started.wait(10), "the engine never received the request"
            assert not engine.abandoned.is_set()
        # the socket is closed: the server sees http.disconnect and cancels the generation
        assert engine.abandoned.wait(10), "the generation kept running for a client that left"
        deadline = time.monotonic() + 10
        while not _access(caplog) and time.monotonic() < deadline:
            time.sleep(0.02)
    # logged as the client's leaving (499), never as an internal error (500)
    assert _access(caplog) == [499]


def _access(caplog) -> list[int]:
    return [
        r.status
        for r in caplog.records
        if r.name == "serving.engine.access" and r.path == "/v1/completions"
    ]


def _receive(messages: list[dict], then_wait: bool):
    queue: asyncio.Queue = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)

    async def receive():
        if queue.empty() and then_wait:
            await asyncio.Event().wait()  # the client stays connected
        return await queue.get()

    return receive


def test_unless_gone_returns_the_work_while_the_client_stays():
    async def scenario():
        receive = _receive([{"type": "http.request", "body": b"", "more_body": False}], True)
        return await unless_gone(receive, asyncio.sleep(0.01, result="answer"))

    assert asyncio.run(scenario()) == "answer"


def test_unless_gone_cancels_the_work_when_the_client_leaves_after_its_body():
    cancelled = []

    async def work():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def scenario():
        receive = _receive(
            [
                {"type": "http.request", "body": b"{}", "more_body": False},
                {"type": "http.disconnect"},
            ],
            False,
        )
        await unless_gone(receive, work())

    with pytest.raises(ClientGone):
        asyncio.run(scenario())
    assert cancelled == [True]
