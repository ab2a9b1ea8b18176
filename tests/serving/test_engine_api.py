"""Contract: the engine's HTTP handlers speak the OpenAI API over any ``Engine``: response
shapes, SSE framing, usage, error shape for every failure, and the chat template.

Runs in-process against a scripted engine (no model), as the engine protocol intends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from fastapi.testclient import TestClient

from serving.engine.app import create_app
from serving.engine.chat_template import render_chat
from serving.engine.protocol import ChoiceDelta, EngineLoad, SamplingParams, Usage
from serving.errors import InvalidRequest, Overloaded


class ScriptedEngine:
    served_model_name = "scripted"

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.params: list[SamplingParams] = []

    def ready(self) -> bool:
        return True

    def load(self) -> EngineLoad:
        return EngineLoad(running=2, waiting=5)

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncIterator:
        if prompt == "too long":
            raise InvalidRequest("prompt too long", "prompt")
        if prompt == "busy":
            raise Overloaded("queue full", retry_after_s=2.5)
        self.prompts.append(prompt)
        self.params.append(params)
        for i in range(params.n):
            yield ChoiceDelta(i, "hel")
            yield ChoiceDelta(i, "lo", "stop")
        yield Usage(prompt_tokens=3, completion_tokens=2 * params.n)


@pytest.fixture
def engine():
    return ScriptedEngine()


@pytest.fixture
def http(engine):
    return TestClient(create_app(engine))


def test_completion_shape_and_params(http, engine):
    r = http.post(
        "/v1/completions",
        json={
            "model": "scripted",
            "prompt": "Q: a A:",
            "n": 2,
            "max_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "\n",
            "seed": 3,
        },
    )
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion"
    assert [c["text"] for c in body["choices"]] == ["hello", "hello"]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert engine.params[0] == SamplingParams(
        max_tokens=7, temperature=0.5, top_p=0.9, stop=("\n",), n=2, seed=3
    )


def test_chat_streaming_framing(http, engine):
    r = http.post(
        "/v1/chat/completions",
        json={
            "model": "scripted",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ],
        },
    )
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"content": "hel", "role": "assistant"}
    assert chunks[1]["choices"][0] == {
        "index": 0,
        "delta": {"content": "lo"},
        "finish_reason": "stop",
    }
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 5
    assert engine.prompts == ["system: be brief\nuser: hi\nassistant:"]


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "other", "prompt": "x"}, 404, "model"),
        ({"model": "scripted"}, 400, "prompt"),
        ({"model": "scripted", "prompt": "x", "n": 0}, 400, "n"),
        ({"model": "scripted", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "scripted", "prompt": "too long"}, 400, "prompt"),
        ({"model": "scripted", "prompt": ["a", "b"]}, 400, "prompt"),
        ({"model": "scripted", "prompt": [1, 2], "echo": True, "max_tokens": 0}, 400, "prompt"),
        ({"model": "scripted", "prompt": "x", "echo": True, "stream": True}, 400, "stream"),
    ],
)
def test_errors_have_the_openai_shape(http, body, status, param):
    r = http.post("/v1/completions", json=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param


def test_unknown_path_and_bad_json(http):
    assert http.get("/v1/nothing").json()["error"]["code"] == "404"
    r = http.post(
        "/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_metrics_expose_engine_load(http):
    text = http.get("/metrics").text
    assert 'vllm:num_requests_running{model_name="scripted"} 2.0' in text
    assert 'vllm:num_requests_waiting{model_name="scripted"} 5.0' in text


def test_chat_template_is_deterministic():
    assert render_chat([("user", "Q: sort 3 1 A:")]) == "Q: sort 3 1 A:"
    assert render_chat([("system", "s"), ("user", "u")]) == "system: s\nuser: u\nassistant:"


def test_overload_is_a_429_with_retry_after_in_the_openai_shape(http):
    r = http.post("/v1/completions", json={"model": "scripted", "prompt": "busy"})
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_health_is_liveness_and_ready_is_readiness(http, engine):
    engine.accepting = lambda: False  # alive, but its queue is full
    assert http.get("/health").status_code == 200
    assert http.get("/ready").status_code == 503
    engine.accepting = lambda: True
    assert http.get("/ready").status_code == 200


def test_chat_content_parts_are_joined(http, engine):
    parts = [{"type": "text", "text": "Q: a"}, {"type": "text", "text": " A:"}]
    r = http.post(
        "/v1/chat/completions",
        json={"model": "scripted", "messages": [{"role": "user", "content": parts}]},
    )
    assert r.status_code == 200 and engine.prompts[-1] == "Q: a A:"


def test_front_door_sheds_beyond_its_in_flight_limit(engine):
    full = TestClient(create_app(engine, max_in_flight=0))
    r = full.post("/v1/completions", json={"model": "scripted", "prompt": "hi"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert full.get("/health").status_code == 200  # liveness is never shed
