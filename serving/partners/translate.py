"""Partner answers to OpenAI shapes: whole responses and server-sent-event streams.

:func:`read_answer` turns one kind's non-streaming body into an OpenAI ``chat.completion`` or
``text_completion``; :func:`translator` returns the incremental state machine for a stream:
an :class:`SSEParser` that accepts any chunk boundaries (mid-line, mid-character) and one
translator per kind that emits OpenAI SSE. Each kind's documented terminal event
(``data: [DONE]``, ``message_stop``, a chunk with a ``finishReason`` for every candidate) is
what tells a complete stream from a cut one, so :meth:`Translator.close` can refuse the latter.

Whatever the partner sends that is not its documented format becomes a
:class:`PartnerProtocolError` naming the partner kind, its name and what was wrong; these
messages never carry request headers, so never a key.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from serving.partners.spec import PartnerProtocolError, PartnerSpec

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
DONE = b"data: [DONE]\n\n"
_ANTHROPIC_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_GEMINI_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
}


def _fail(spec: PartnerSpec, what: str) -> PartnerProtocolError:
    key = spec.api_key()
    if key:  # a partner's error text may quote the key it was sent
        what = what.replace(key, "***")
    return PartnerProtocolError(f"{spec.kind} partner {spec.name!r}: {what}")


def _load(spec: PartnerSpec, raw: bytes | str, what: str) -> dict:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        snippet = raw[:80].decode(errors="replace") if isinstance(raw, bytes) else raw[:80]
        raise _fail(spec, f"{what} is not valid JSON: {snippet!r}") from None
    if not isinstance(data, dict):
        raise _fail(spec, f"{what} is not a JSON object")
    return data


def _need(spec: PartnerSpec, obj: Any, key: str, where: str, kind: type = object) -> Any:
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], kind):
        raise _fail(spec, f"response has no {where}.{key}" if where else f"response has no {key}")
    return obj[key]


def error_detail(body: bytes) -> str:
    """The message of a partner's error body, whichever kind's shape it has."""
    try:
        data = json.loads(body)
        error = data["error"]
        return str(error.get("message") or error) if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return body[:200].decode(errors="replace")


def _client_model(spec: PartnerSpec, payload: dict) -> str:
    return str(payload.get("model") or spec.model)


class OpenAIShapes:
    """Builds the OpenAI shapes (responses and SSE chunks) for one translated request."""

    def __init__(self, spec: PartnerSpec, path: str, payload: dict) -> None:
        self.chat = path == CHAT
        self.model = _client_model(spec, payload)
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        options = payload.get("stream_options") or {}
        self.include_usage = bool(isinstance(options, dict) and options.get("include_usage"))

    def response(self, texts: list[tuple[str, str | None]], usage: dict) -> dict:
        if self.chat:
            choices = [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": f}
                for i, (text, f) in enumerate(texts)
            ]
        else:
            choices = [
                {"index": i, "text": text, "finish_reason": f, "logprobs": None}
                for i, (text, f) in enumerate(texts)
            ]
        return self._envelope(choices, usage=usage, stream=False)

    def _envelope(self, choices: list[dict], stream: bool, usage: dict | None = None) -> dict:
        obj = "text_completion" if not self.chat else "chat.completion"
        out = {
            "id": self.id,
            "object": f"{obj}.chunk" if stream and self.chat else obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage
        return out

    def _sse(self, choices: list[dict], usage: dict | None = None) -> bytes:
        return f"data: {json.dumps(self._envelope(choices, True, usage))}\n\n".encode()

    def role(self, index: int) -> bytes:
        if not self.chat:
            return b""
        delta = {"role": "assistant", "content": ""}
        return self._sse([{"index": index, "delta": delta, "finish_reason": None}])

    def text(self, index: int, text: str) -> bytes:
        if self.chat:
            return self._sse([{"index": index, "delta": {"content": text}, "finish_reason": None}])
        return self._sse([{"index": index, "text": text, "finish_reason": None, "logprobs": None}])

    def finish(self, index: int, reason: str) -> bytes:
        if self.chat:
            return self._sse([{"index": index, "delta": {}, "finish_reason": reason}])
        return self._sse([{"index": index, "text": "", "finish_reason": reason, "logprobs": None}])

    def usage(self, prompt: int, completion: int) -> bytes:
        if not self.include_usage:
            return b""
        return self._sse([], usage=_usage(prompt, completion))


def _usage(prompt: int, completion: int, total: int | None = None) -> dict:
    total = prompt + completion if total is None else total
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def _read_openai(spec: PartnerSpec, path: str, payload: dict, body: bytes) -> dict:
    response = _load(spec, body, "the response")
    _need(spec, response, "choices", "", list)
    response["model"] = _client_model(spec, payload)
    return response


def _read_anthropic(spec: PartnerSpec, path: str, payload: dict, body: bytes) -> dict:
    response = _load(spec, body, "the response")
    content = _need(spec, response, "content", "", list)
    text = "".join(
        str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text"
    )
    finish = _ANTHROPIC_FINISH.get(response.get("stop_reason"), "stop")
    usage = _need(spec, response, "usage", "", dict)
    prompt = _need(spec, usage, "input_tokens", "usage", int)
    completion = _need(spec, usage, "output_tokens", "usage", int)
    return OpenAIShapes(spec, path, payload).response([(text, finish)], _usage(prompt, completion))


def _read_gemini(spec: PartnerSpec, path: str, payload: dict, body: bytes) -> dict:
    response = _load(spec, body, "the response")
    _blocked(spec, response)
    candidates = _need(spec, response, "candidates", "", list)
    if not candidates:
        raise _fail(spec, "response has no candidates")
    choices = []
    for candidate in sorted(candidates, key=lambda c: int(c.get("index") or 0)):
        reason = candidate.get("finishReason")
        choices.append((_gemini_text(spec, candidate), _GEMINI_FINISH.get(reason, "stop")))
    usage = response.get("usageMetadata") or {}
    prompt = int(usage.get("promptTokenCount") or 0)
    completion = int(usage.get("candidatesTokenCount") or 0)
    total = int(usage.get("totalTokenCount") or prompt + completion)
    return OpenAIShapes(spec, path, payload).response(choices, _usage(prompt, completion, total))


_READERS: dict[str, Callable[[PartnerSpec, str, dict, bytes], dict]] = {
    "openai": _read_openai,
    "anthropic": _read_anthropic,
    "gemini": _read_gemini,
}


def read_answer(spec: PartnerSpec, path: str, payload: dict, status: int, body: bytes) -> dict:
    """A partner's non-streaming answer as the OpenAI response for ``path``."""
    if not 200 <= status < 300:
        raise _fail(spec, f"answered HTTP {status}: {error_detail(body)}")
    try:
        return _READERS[spec.kind](spec, path, payload, body)
    except (TypeError, ValueError, AttributeError) as exc:
        raise _fail(spec, f"malformed response: {exc}") from None


class SSEParser:
    """Incremental server-sent-events parser: bytes in, complete ``(event, data)`` out.

    Lines may end in LF or CRLF and may be split anywhere, including inside a multi-byte
    character; an event is complete at its blank line. Comment lines (``:``) are skipped.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        events = []
        for raw in lines:
            line = raw.removesuffix(b"\r").decode("utf-8", errors="replace")
            if not line:
                if self._data:
                    events.append((self._event, "\n".join(self._data)))
                self._event, self._data = None, []
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
        return events


class Translator:
    """Shared stream bookkeeping; subclasses handle one partner event each."""

    terminal = ""

    def __init__(self, spec: PartnerSpec, path: str, payload: dict) -> None:
        self.spec, self.out = spec, OpenAIShapes(spec, path, payload)
        self.started = False
        self.done = False
        self._parser = SSEParser()
        self._prompt_tokens = 0
        self._completion_tokens = 0

    def feed(self, chunk: bytes) -> bytes:
        emitted = b""
        for event, data in self._parser.feed(chunk):
            if self.done:
                continue
            try:
                emitted += self._on(event, data)
            except (TypeError, ValueError, AttributeError) as exc:
                raise _fail(self.spec, f"malformed stream event: {exc}") from None
        return emitted

    def close(self) -> bytes:
        if not self.done:
            raise _fail(self.spec, f"stream ended before its terminal event ({self.terminal})")
        return self._final() + DONE

    def _final(self) -> bytes:
        return self.out.usage(self._prompt_tokens, self._completion_tokens)

    def _emit(self, index: int, text: str) -> bytes:
        if not text:
            return b""
        self.started = True
        return self.out.text(index, text)

    def _on(self, event: str | None, data: str) -> bytes:
        raise NotImplementedError


class _OpenAIStream(Translator):
    terminal = "data: [DONE]"

    def _on(self, event: str | None, data: str) -> bytes:
        if data.strip() == "[DONE]":
            self.done = True
            return b""
        chunk = _load(self.spec, data, "a stream event")
        if "error" in chunk:
            raise _fail(self.spec, f"stream error: {error_detail(data.encode())}")
        for choice in _need(self.spec, chunk, "choices", "", list):
            if (choice.get("delta") or {}).get("content") or choice.get("text"):
                self.started = True
        chunk["model"] = self.out.model
        return f"data: {json.dumps(chunk)}\n\n".encode()

    def _final(self) -> bytes:
        return b""  # the partner sent its own usage chunk when the client asked for one


class _AnthropicStream(Translator):
    terminal = "message_stop"

    def __init__(self, spec: PartnerSpec, path: str, payload: dict) -> None:
        super().__init__(spec, path, payload)
        self._open = False

    def _on(self, event: str | None, data: str) -> bytes:
        message = _load(self.spec, data, "a stream event")
        kind = message.get("type", event)
        if kind == "error":
            error = message.get("error") or {}
            raise _fail(self.spec, f"stream error {error.get('type')}: {error.get('message')}")
        if kind == "message_start":
            usage = _need(self.spec, message, "message", "message_start", dict).get("usage") or {}
            self._prompt_tokens = int(usage.get("input_tokens") or 0)
            self._open = True
            return self.out.role(0)
        if (
            kind in ("content_block_start", "content_block_delta", "message_delta")
            and not self._open
        ):
            raise _fail(self.spec, f"stream sent {kind} before message_start")
        if kind == "content_block_start":
            block = _need(self.spec, message, "content_block", kind, dict)
            return (
                self._emit(0, str(block.get("text") or "")) if block.get("type") == "text" else b""
            )
        if kind == "content_block_delta":
            delta = _need(self.spec, message, "delta", kind, dict)
            return (
                self._emit(0, str(delta.get("text") or ""))
                if delta.get("type") == "text_delta"
                else b""
            )
        if kind == "message_delta":
            delta = _need(self.spec, message, "delta", kind, dict)
            self._completion_tokens = int((message.get("usage") or {}).get("output_tokens") or 0)
            reason = delta.get("stop_reason")
            return self.out.finish(0, _ANTHROPIC_FINISH.get(reason, "stop")) if reason else b""
        if kind == "message_stop":
            self.done = True
        return b""  # ping, content_block_stop, and event types added after this was written


class _GeminiStream(Translator):
    terminal = "a chunk with a finishReason"

    def __init__(self, spec: PartnerSpec, path: str, payload: dict) -> None:
        super().__init__(spec, path, payload)
        self._n = int(payload.get("n") or 1)
        self._seen: set[int] = set()
        self._finished: set[int] = set()

    def _on(self, event: str | None, data: str) -> bytes:
        chunk = _load(self.spec, data, "a stream chunk")
        if "error" in chunk:
            raise _fail(self.spec, f"stream error: {error_detail(data.encode())}")
        _blocked(self.spec, chunk)
        emitted = b""
        for candidate in chunk.get("candidates") or []:
            index = int(candidate.get("index") or 0)
            if index not in self._seen:
                self._seen.add(index)
                emitted += self.out.role(index)
            emitted += self._emit(index, _gemini_text(self.spec, candidate))
            reason = candidate.get("finishReason")
            if reason and index not in self._finished:
                self._finished.add(index)
                emitted += self.out.finish(index, _GEMINI_FINISH.get(reason, "stop"))
        usage = chunk.get("usageMetadata") or {}
        self._prompt_tokens = int(usage.get("promptTokenCount") or self._prompt_tokens)
        self._completion_tokens = int(usage.get("candidatesTokenCount") or self._completion_tokens)
        self.done = len(self._finished) >= self._n
        return emitted


def _gemini_text(spec: PartnerSpec, candidate: dict) -> str:
    content = candidate.get("content") or {}
    parts = content.get("parts") or []
    if not isinstance(parts, list):
        raise _fail(spec, "candidate content.parts is not a list")
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def _blocked(spec: PartnerSpec, response: dict) -> None:
    reason = (response.get("promptFeedback") or {}).get("blockReason")
    if reason and not response.get("candidates"):
        raise _fail(spec, f"prompt blocked ({reason})")


_TRANSLATORS: dict[str, type[Translator]] = {
    "openai": _OpenAIStream,
    "anthropic": _AnthropicStream,
    "gemini": _GeminiStream,
}


def translator(spec: PartnerSpec, path: str, payload: dict) -> Translator:
    """A fresh translator for one streamed answer from ``spec``'s partner."""
    return _TRANSLATORS[spec.kind](spec, path, payload)
