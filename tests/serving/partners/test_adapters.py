"""Partner adapters against fake partners speaking each kind's real wire format.

Contract: an OpenAI-shaped request built by ``adapter_for(kind)`` is accepted by a server of
that kind over real loopback HTTP, with the key in that kind's auth header; the answer comes
back in the OpenAI shape (chat and text completions, streamed or not) under the client's
model name; ``max_tokens``, ``stop``, ``n``, system messages and sampling reach the partner
in its own terms; malformed bodies, error answers and cut streams raise
``PartnerProtocolError`` naming the partner; the key never shows in a repr, a spec's
``to_dict`` or an error message. Stream translators accept any chunk boundaries.
"""

from __future__ import annotations

import json

import httpx
import pytest

from serving.errors import InvalidRequest
from serving.partners.adapters import adapter_for
from serving.partners.spec import PartnerProtocolError, PartnerSpec, UpstreamRequest

KEY = "sk-test-secret-0123456789"
KINDS = ("openai", "anthropic", "gemini")
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
AUTH_HEADER = {"openai": "authorization", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}


@pytest.fixture
def partner(fake_partner, monkeypatch):
    """A started fake partner of ``kind`` and the spec that points at it."""
    monkeypatch.setenv("PARTNER_TEST_KEY", KEY)

    def _make(kind: str, name: str | None = None):
        name = name or f"{kind}-one"
        server = fake_partner(kind, name=name, key=KEY)
        spec = PartnerSpec(
            name=name,
            kind=kind,
            base_url=server.base_url,
            model=f"{kind}-model",
            api_key_env="PARTNER_TEST_KEY",
            timeout_s=5,
        )
        return server, spec

    return _make


def payload_for(path: str, **extra) -> dict:
    if path == CHAT:
        return {"model": "auto", "messages": [{"role": "user", "content": "hello there"}], **extra}
    return {"model": "auto", "prompt": "hello there", **extra}


def send(request: UpstreamRequest, timeout: float = 5.0) -> httpx.Response:
    return httpx.post(request.url, headers=request.headers, json=request.json, timeout=timeout)


def complete(spec: PartnerSpec, path: str, payload: dict) -> dict:
    adapter = adapter_for(spec.kind)
    response = send(adapter.build(spec, path, payload))
    return adapter.parse(spec, path, payload, response.status_code, response.content)


def stream(spec: PartnerSpec, path: str, payload: dict):
    """Stream a request through the translator; returns (events, translator, error)."""
    adapter = adapter_for(spec.kind)
    request = adapter.build(spec, path, {**payload, "stream": True})
    translator = adapter.stream(spec, path, payload)
    out = b""
    try:
        with httpx.stream(
            "POST", request.url, headers=request.headers, json=request.json, timeout=5
        ) as response:
            assert response.status_code == 200, response.read()
            for chunk in response.iter_raw():
                out += translator.feed(chunk)
    except httpx.RemoteProtocolError:
        pass  # the partner dropped the connection: close() decides what that means
    except PartnerProtocolError as exc:
        return sse_events(out), translator, exc
    try:
        out += translator.close()
    except PartnerProtocolError as exc:
        return sse_events(out), translator, exc
    return sse_events(out), translator, None


def sse_events(raw: bytes) -> list:
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            data = block.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed_text(events: list, index: int = 0) -> str:
    text = ""
    for event in events:
        for choice in event["choices"] if isinstance(event, dict) else []:
            if choice["index"] == index:
                text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return text


def finish_reasons(events: list) -> dict[int, str]:
    return {
        c["index"]: c["finish_reason"]
        for e in events
        if isinstance(e, dict)
        for c in e["choices"]
        if c["finish_reason"]
    }


def answer_text(response: dict, index: int = 0) -> str:
    choice = response["choices"][index]
    return choice["message"]["content"] if "message" in choice else choice["text"]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("kind", KINDS)
def test_answer_comes_back_in_openai_shape(partner, kind, path):
    server, spec = partner(kind)

    response = complete(spec, path, payload_for(path))

    assert answer_text(response) == f"partner:{spec.name} says hi"
    assert response["model"] == "auto"
    assert response["object"] == ("chat.completion" if path == CHAT else "text_completion")
    assert response["choices"][0]["finish_reason"] == "stop"
    usage = response["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert server.counts() == {"requests": 1, "streams": 0, "unauthorized": 0}


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("kind", KINDS)
def test_stream_comes_back_as_openai_chunks(partner, kind, path):
    server, spec = partner(kind)

    events, translator, error = stream(spec, path, payload_for(path))

    assert error is None
    assert events[-1] == "[DONE]"
    assert streamed_text(events) == f"partner:{spec.name} says hi"
    assert finish_reasons(events) == {0: "stop"}
    assert translator.started
    chunks = events[:-1]
    assert {e["model"] for e in chunks} == {"auto"}
    expected = "chat.completion.chunk" if path == CHAT else "text_completion"
    assert {e["object"] for e in chunks} == {expected}
    if path == CHAT:
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert server.counts()["streams"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_max_tokens_truncates_with_finish_length(partner, kind):
    server, spec = partner(kind)

    response = complete(spec, CHAT, payload_for(CHAT, max_tokens=2))
    events, _, error = stream(spec, CHAT, payload_for(CHAT, max_tokens=2))

    assert answer_text(response) == f"partner:{spec.name} says"
    assert response["choices"][0]["finish_reason"] == "length"
    assert response["usage"]["completion_tokens"] == 2
    assert error is None
    assert streamed_text(events) == f"partner:{spec.name} says"
    assert finish_reasons(events) == {0: "length"}


@pytest.mark.parametrize("kind", KINDS)
def test_stop_sequences_reach_the_partner(partner, kind):
    server, spec = partner(kind)

    response = complete(spec, CHAT, payload_for(CHAT, stop=[" hi", "never"]))

    assert answer_text(response) == f"partner:{spec.name} says"
    assert response["choices"][0]["finish_reason"] == "stop"
    sent = server.app.last_request()["json"]
    stops = {
        "openai": lambda: sent["stop"],
        "anthropic": lambda: sent["stop_sequences"],
        "gemini": lambda: sent["generationConfig"]["stopSequences"],
    }[kind]()
    assert stops == [" hi", "never"]


def test_anthropic_request_mapping(partner):
    server, spec = partner("anthropic")
    payload = {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "three"},
        ],
        "temperature": 0.5,
        "top_p": 0.9,
    }

    complete(spec, CHAT, payload)

    sent = server.app.last_request()
    assert sent["path"] == "/v1/messages"
    assert sent["json"] == {
        "model": "anthropic-model",
        "max_tokens": 256,
        "system": "be brief",
        "messages": [
            {"role": "user", "content": "one\n\ntwo"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "three"},
        ],
        "temperature": 0.5,
        "top_p": 0.9,
    }


def test_gemini_request_mapping(partner):
    server, spec = partner("gemini")
    payload = {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "two"},
        ],
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.8,
    }

    complete(spec, CHAT, payload)

    sent = server.app.last_request()
    assert sent["path"] == "/v1beta/models/gemini-model:generateContent"
    assert sent["json"] == {
        "contents": [
            {"role": "user", "parts": [{"text": "one"}]},
            {"role": "model", "parts": [{"text": "ok"}]},
            {"role": "user", "parts": [{"text": "two"}]},
        ],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"maxOutputTokens": 50, "temperature": 0.2, "topP": 0.8},
    }


def test_openai_body_passes_through_with_partner_model(partner):
    server, spec = partner("openai")

    complete(spec, CHAT, payload_for(CHAT, temperature=1.5, seed=3))

    sent = server.app.last_request()
    assert sent["path"] == "/v1/chat/completions"
    assert sent["json"]["model"] == "openai-model"
    assert (sent["json"]["temperature"], sent["json"]["seed"]) == (1.5, 3)


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_n_choices(partner, kind):
    server, spec = partner(kind)

    response = complete(spec, CHAT, payload_for(CHAT, n=2))
    events, _, error = stream(spec, CHAT, payload_for(CHAT, n=2))

    assert [c["index"] for c in response["choices"]] == [0, 1]
    assert {answer_text(response, i) for i in (0, 1)} == {f"partner:{spec.name} says hi"}
    assert error is None
    assert streamed_text(events, 1) == f"partner:{spec.name} says hi"
    assert finish_reasons(events) == {0: "stop", 1: "stop"}


def test_anthropic_refuses_what_it_cannot_express(partner):
    server, spec = partner("anthropic")
    adapter = adapter_for("anthropic")

    with pytest.raises(InvalidRequest, match="n must be 1"):
        adapter.build(spec, CHAT, payload_for(CHAT, n=2))
    with pytest.raises(InvalidRequest, match="role 'tool'"):
        adapter.build(spec, CHAT, {"model": "auto", "messages": [{"role": "tool", "content": "x"}]})
    with pytest.raises(InvalidRequest, match="do not support 'tools'"):
        adapter.build(spec, CHAT, payload_for(CHAT, tools=[{"type": "function"}]))
    assert server.counts()["requests"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_probe_is_one_token(partner, kind):
    server, spec = partner(kind)
    request = adapter_for(kind).probe(spec)

    response = send(request)

    assert response.status_code == 200
    parsed = adapter_for(kind).parse(spec, CHAT, {"model": spec.name}, 200, response.content)
    assert parsed["usage"]["completion_tokens"] == 1
    assert parsed["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("kind", KINDS)
def test_key_goes_in_the_kind_header_and_nowhere_else(partner, monkeypatch, kind):
    server, spec = partner(kind)
    request = adapter_for(kind).build(spec, CHAT, payload_for(CHAT))

    assert KEY in request.headers[AUTH_HEADER[kind]]
    assert KEY not in request.url and KEY not in json.dumps(request.json)
    assert KEY not in repr(request)
    assert KEY not in repr(spec) and KEY not in json.dumps(spec.to_dict())
    assert send(request).status_code == 200

    monkeypatch.setenv("PARTNER_TEST_KEY", "wrong")
    rejected = send(adapter_for(kind).build(spec, CHAT, payload_for(CHAT)))
    assert rejected.status_code == 401
    assert server.counts()["unauthorized"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_json_is_a_protocol_error(partner, kind):
    server, spec = partner(kind)
    server.set_mode("malformed_json")

    with pytest.raises(PartnerProtocolError) as caught:
        complete(spec, CHAT, payload_for(CHAT))
    _, translator, error = stream(spec, CHAT, payload_for(CHAT))

    assert f"{kind} partner {spec.name!r}" in str(caught.value)
    assert "not valid JSON" in str(caught.value)
    assert isinstance(error, PartnerProtocolError)
    assert not translator.started
    assert KEY not in str(caught.value) + str(error)


@pytest.mark.parametrize("kind", KINDS)
def test_cut_stream_is_a_protocol_error(partner, kind):
    server, spec = partner(kind)
    server.set_mode("cut_stream", cut_after=2)

    events, translator, error = stream(spec, CHAT, payload_for(CHAT))

    assert isinstance(error, PartnerProtocolError)
    assert "stream ended before its terminal event" in str(error)
    assert spec.name in str(error) and KEY not in str(error)
    assert translator.started  # tokens reached the client: not retriable elsewhere
    assert streamed_text(events) == f"partner:{spec.name} says"


@pytest.mark.parametrize("kind", KINDS)
def test_stream_cut_before_first_token_has_not_started(partner, kind):
    server, spec = partner(kind)
    server.set_mode("cut_stream", cut_after=0)

    _, translator, error = stream(spec, CHAT, payload_for(CHAT))

    assert isinstance(error, PartnerProtocolError)
    assert not translator.started


@pytest.mark.parametrize("kind", KINDS)
def test_error_answers_raise_with_the_partner_message(partner, kind):
    server, spec = partner(kind)
    adapter = adapter_for(kind)
    request = adapter.build(spec, CHAT, payload_for(CHAT))

    server.set_mode("rate_limit", retry_after_s=7)
    limited = send(request)
    server.set_mode("error_500")
    failed = send(request)

    assert (limited.status_code, limited.headers["retry-after"]) == (429, "7")
    with pytest.raises(PartnerProtocolError, match="HTTP 429: rate limit exceeded"):
        adapter.parse(spec, CHAT, payload_for(CHAT), limited.status_code, limited.content)
    assert failed.status_code == 500
    with pytest.raises(PartnerProtocolError, match="HTTP 500: internal error"):
        adapter.parse(spec, CHAT, payload_for(CHAT), failed.status_code, failed.content)


@pytest.mark.parametrize("kind", KINDS)
def test_a_partner_error_quoting_the_key_is_masked(partner, kind):
    server, spec = partner(kind)
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}).encode()

    with pytest.raises(PartnerProtocolError) as caught:
        adapter_for(kind).parse(spec, CHAT, payload_for(CHAT), 401, body)

    assert "HTTP 401: Incorrect API key provided: ***" in str(caught.value)
    assert KEY not in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
def test_slow_stream_still_completes(partner, kind):
    server, spec = partner(kind)
    server.set_mode("slow_stream", token_delay_s=0.02)

    events, translator, error = stream(spec, CHAT, payload_for(CHAT))

    assert error is None
    assert streamed_text(events) == f"partner:{spec.name} says hi"


def test_fake_partner_hangs_stops_and_restarts(partner):
    server, spec = partner("anthropic")
    request = adapter_for("anthropic").build(spec, CHAT, payload_for(CHAT))

    server.set_mode("hang")
    with pytest.raises(httpx.ReadTimeout):
        send(request, timeout=0.3)
    server.stop()
    with pytest.raises(httpx.ConnectError):
        send(request)
    server.start()
    server.set_mode("ok")

    assert send(request).status_code == 200
    state = httpx.get(f"{server.url}/_control").json()
    assert state["mode"] == "ok" and state["counts"]["requests"] == 2


def test_fake_partner_control_endpoint(partner):
    server, spec = partner("gemini")

    switched = httpx.post(f"{server.url}/_control", json={"mode": "slow", "delay_s": 0.1})
    refused = httpx.post(f"{server.url}/_control", json={"mode": "sideways"})

    assert switched.json()["mode"] == "slow" and switched.json()["params"]["delay_s"] == 0.1
    assert refused.status_code == 400 and "mode must be one of" in refused.json()["error"]
    assert complete(spec, CHAT, payload_for(CHAT))["choices"][0]["finish_reason"] == "stop"


def test_fake_partner_runs_as_a_command(helpers, tmp_path, monkeypatch):
    port = helpers.free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["-m", "testing.partners.fake", "--kind", "gemini", "--name", "gem", "--key", KEY]
    proc = helpers.Proc(
        [*args, "--port", str(port)], url, tmp_path / "fake.log", helpers.child_env()
    )
    monkeypatch.setenv("PARTNER_TEST_KEY", KEY)
    spec = PartnerSpec("gem", "gemini", url, "gemini-model", api_key_env="PARTNER_TEST_KEY")
    proc.start(timeout_s=60)
    try:
        assert answer_text(complete(spec, CHAT, payload_for(CHAT))) == "partner:gem says hi"
        assert httpx.get(f"{url}/_control").json()["counts"]["requests"] == 1
    finally:
        proc.stop()
    assert KEY not in (tmp_path / "fake.log").read_text()


ANTHROPIC_STREAM = (
    b"event: message_start\r\n"
    b'data: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant",'
    b'"content":[],"model":"c","usage":{"input_tokens":4,"output_tokens":1}}}\r\n\r\n'
    b'event: content_block_start\r\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\r\n\r\n'
    b": a comment line\r\n\r\n"
    b'event: ping\r\ndata: {"type": "ping"}\r\n\r\n'
    b'event: content_block_delta\r\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"gr\xc3\xbc\xc3\x9fe"}}\r\n\r\n'
    b'event: content_block_delta\r\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":" aus Z\xc3\xbcrich"}}\r\n\r\n'
    b'event: content_block_stop\r\ndata: {"type":"content_block_stop","index":0}\r\n\r\n'
    b'event: message_delta\r\ndata: {"type":"message_delta","delta":{"stop_reason":'
    b'"max_tokens","stop_sequence":null},"usage":{"output_tokens":2}}\r\n\r\n'
    b'event: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n'
)
GEMINI_STREAM = (
    b'data: {"candidates":[{"content":{"parts":[{"text":"gr\xc3\xbc\xc3\x9fe"}],'
    b'"role":"model"},"index":0}]}\r\n\r\n'
    b'data: {"candidates":[{"content":{"parts":[{"text":" aus Z\xc3\xbcrich"}],'
    b'"role":"model"},"finishReason":"MAX_TOKENS","index":0}],'
    b'"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2,"totalTokenCount":6}}'
    b"\r\n\r\n"
)
OPENAI_STREAM = (
    b'data: {"id":"x","object":"chat.completion.chunk","model":"gpt","choices":[{"index":0,'
    b'"delta":{"content":"gr\xc3\xbc\xc3\x9fe aus Z\xc3\xbcrich"},"finish_reason":null}]}\n\n'
    b'data: {"id":"x","object":"chat.completion.chunk","model":"gpt","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"length"}]}\n\n'
    b"data: [DONE]\n\n"
)
RECORDED = {"anthropic": ANTHROPIC_STREAM, "gemini": GEMINI_STREAM, "openai": OPENAI_STREAM}


def offline_spec(kind: str) -> PartnerSpec:
    return PartnerSpec(name="p", kind=kind, base_url="http://127.0.0.1:9", model="m")


def translate(kind: str, raw: bytes, step: int, include_usage: bool = False) -> list:
    payload = payload_for(CHAT, stream_options={"include_usage": include_usage})
    translator = adapter_for(kind).stream(offline_spec(kind), CHAT, payload)
    out = b"".join(translator.feed(raw[i : i + step]) for i in range(0, len(raw), step))
    return sse_events(out + translator.close())


@pytest.mark.parametrize("kind", KINDS)
def test_translators_accept_one_byte_at_a_time(kind):
    whole = translate(kind, RECORDED[kind], len(RECORDED[kind]))
    bytewise = translate(kind, RECORDED[kind], 1)
    odd = translate(kind, RECORDED[kind], 7)

    for events in (whole, bytewise, odd):
        assert streamed_text(events) == "grüße aus Zürich"
        assert finish_reasons(events) == {0: "length"}
        assert events[-1] == "[DONE]"


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
def test_translators_report_usage_when_asked(kind):
    events = translate(kind, RECORDED[kind], 5, include_usage=True)

    assert events[-2]["choices"] == []
    assert events[-2]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


@pytest.mark.parametrize("kind", KINDS)
def test_translators_refuse_a_stream_without_its_terminal_event(kind):
    raw = RECORDED[kind]
    cut = raw[: raw.rindex(b"data:")]
    translator = adapter_for(kind).stream(offline_spec(kind), CHAT, payload_for(CHAT))

    translator.feed(cut)

    with pytest.raises(PartnerProtocolError, match=f"{kind} partner 'p': stream ended"):
        translator.close()


def test_anthropic_error_event_is_a_protocol_error():
    translator = adapter_for("anthropic").stream(offline_spec("anthropic"), CHAT, payload_for(CHAT))
    start = ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: content_block_start")]
    error = (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )

    translator.feed(start)
    with pytest.raises(PartnerProtocolError, match="overloaded_error: Overloaded"):
        translator.feed(error)


def test_unknown_kind_is_refused():
    with pytest.raises(InvalidRequest, match="unknown partner kind 'mistral'"):
        adapter_for("mistral")
