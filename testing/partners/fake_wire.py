"""The wire dialects a fake partner speaks: OpenAI, Anthropic Messages, Gemini generateContent.

Each :class:`Wire` knows one kind's routes, auth header, request validation (as strict as the
real API where an adapter could get it wrong: Anthropic's required ``max_tokens`` and
``anthropic-version``, alternating roles; Gemini's ``contents`` roles and ``?alt=sse``), and
its response, stream-event and error shapes. A request becomes an :class:`Ask`, whatever the
dialect; :func:`answer_for` makes the deterministic answer ``partner:<name> says hi``, one
token per word, truncated by ``max_tokens`` (finish ``length``) or cut at a stop sequence.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


class BadRequest(Exception):
    """The request is not valid for this partner's API (answered 400 in the kind's shape)."""


@dataclass
class Ask:
    """What a fake partner needs from one request, whatever the wire format."""

    stream: bool
    texts: list[str]
    max_tokens: int | None = None
    stops: list[str] = field(default_factory=list)
    n: int = 1
    completion: bool = False  # OpenAI /v1/completions (text) rather than chat


@dataclass
class Answer:
    pieces: list[str]
    finish: str  # "stop" | "length" | "stop_sequence"
    prompt_tokens: int
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def answer_for(name: str, ask: Ask) -> Answer:
    words = f"partner:{name} says hi".split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    finish = "stop"
    if ask.max_tokens is not None and ask.max_tokens < len(pieces):
        pieces, finish = pieces[: ask.max_tokens], "length"
    prompt_tokens = sum(len(t.split()) for t in ask.texts)
    text = "".join(pieces)
    for stop in ask.stops:
        if stop and stop in text:
            cut = text[: text.index(stop)]
            kept = _pieces_of(pieces, cut)
            return Answer(kept, "stop_sequence", prompt_tokens, stop)
    return Answer(pieces, finish, prompt_tokens)


def _pieces_of(pieces: list[str], text: str) -> list[str]:
    kept, used = [], 0
    for piece in pieces:
        if used + len(piece) > len(text):
            rest = text[used:]
            return kept + ([rest] if rest else [])
        kept.append(piece)
        used += len(piece)
    return kept


def _texts(messages: Any, where: str) -> list[str]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"{where}: must be a non-empty list")
    return [str(m) for m in messages]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


class Wire:
    """One kind's dialect: routes, auth, request validation, answer and error shapes."""

    kind = ""

    def route(self, method: str, path: str, query: str) -> dict | None:
        raise NotImplementedError

    def authorized(self, headers: dict[str, str], key: str) -> bool:
        raise NotImplementedError

    def header_problem(self, headers: dict[str, str]) -> str | None:
        """What a required non-auth header lacks, as the real API would say it."""
        return None

    def parse(self, route: dict, body: dict) -> Ask:
        raise NotImplementedError

    def error(self, status: int, message: str) -> bytes:
        raise NotImplementedError

    def full(self, model: str, ask: Ask, answer: Answer) -> dict:
        raise NotImplementedError

    def stream_head(self, model: str, ask: Ask, answer: Answer) -> list[bytes]:
        return []

    def stream_token(self, model: str, ask: Ask, piece: str, index: int) -> bytes:
        raise NotImplementedError

    def stream_tail(self, model: str, ask: Ask, answer: Answer) -> list[bytes]:
        raise NotImplementedError


class OpenAIWire(Wire):
    kind = "openai"
    _finish = {"stop": "stop", "length": "length", "stop_sequence": "stop"}

    def route(self, method: str, path: str, query: str) -> dict | None:
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            return {"completion": path == "/v1/completions"}
        return None

    def authorized(self, headers: dict[str, str], key: str) -> bool:
        return headers.get("authorization") == f"Bearer {key}"

    def parse(self, route: dict, body: dict) -> Ask:
        if "model" not in body:
            raise BadRequest("you must provide a model parameter")
        if route["completion"]:
            prompt = body.get("prompt")
            texts = [prompt] if isinstance(prompt, str) else _texts(prompt, "prompt")
        else:
            texts = [str(m.get("content")) for m in _messages(body.get("messages"))]
        stop = body.get("stop")
        return Ask(
            stream=bool(body.get("stream")),
            texts=texts,
            max_tokens=body.get("max_tokens", body.get("max_completion_tokens")),
            stops=[stop] if isinstance(stop, str) else list(stop or []),
            n=int(body.get("n") or 1),
            completion=route["completion"],
        )

    def error(self, status: int, message: str) -> bytes:
        kind = {401: "invalid_request_error", 429: "requests", 400: "invalid_request_error"}
        code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
        err = {"message": message, "type": kind.get(status, "server_error"), "param": None}
        return json.dumps({"error": {**err, "code": code}}).encode()

    def full(self, model: str, ask: Ask, answer: Answer) -> dict:
        usage = _usage(answer, ask.n)
        finish = self._finish[answer.finish]
        if ask.completion:
            choices = [
                {"index": i, "text": answer.text, "finish_reason": finish, "logprobs": None}
                for i in range(ask.n)
            ]
            obj, prefix = "text_completion", "cmpl"
        else:
            message = {"role": "assistant", "content": answer.text}
            choices = [
                {"index": i, "message": message, "finish_reason": finish} for i in range(ask.n)
            ]
            obj, prefix = "chat.completion", "chatcmpl"
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": obj,
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage,
        }

    def _chunk(self, model: str, ask: Ask, choice: dict) -> bytes:
        obj = "text_completion" if ask.completion else "chat.completion.chunk"
        data = {"id": "fake", "object": obj, "created": 0, "model": model, "choices": [choice]}
        return _sse(data)

    def stream_head(self, model: str, ask: Ask, answer: Answer) -> list[bytes]:
        if ask.completion:
            return []
        delta = {"role": "assistant", "content": ""}
        return [
            self._chunk(model, ask, {"index": i, "delta": delta, "finish_reason": None})
            for i in range(ask.n)
        ]

    def stream_token(self, model: str, ask: Ask, piece: str, index: int) -> bytes:
        if ask.completion:
            return self._chunk(model, ask, {"index": index, "text": piece, "finish_reason": None})
        delta = {"content": piece}
        return self._chunk(model, ask, {"index": index, "delta": delta, "finish_reason": None})

    def stream_tail(self, model: str, ask: Ask, answer: Answer) -> list[bytes]:
        finish = self._finish[answer.finish]
        if ask.completion:
            ends = [{"index": i, "text": "", "finish_reason": finish} for i in range(ask.n)]
        else:
            ends = [{"index": i, "delta": {}, "finish_reason": finish} for i in range(ask.n)]
        return [self._chunk(model, ask, end) for end in ends] + [b"data: [DONE]\n\n"]


def _messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise BadRequest(f"messages.{i}: each message needs a role and content")
    return messages


def _usage(answer: Answer, n: int) -> dict:
    out = len(answer.pieces) * n
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": out,
        "total_tokens": answer.prompt_tokens + out,
    }


class AnthropicWire(Wire):
    kind = "anthropic"
    _stop = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}
    _types = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }

    def route(self, method: str, path: str, query: str) -> dict | None:
        return {} if method == "POST" and path == "/v1/messages" else None

    def authorized(self, headers: dict[str, str], key: str) -> bool:
        return headers.get("x-api-key") == key

    def header_problem(self, headers: dict[str, str]) -> str | None:
        if "anthropic-version" not in headers:
            return "anthropic-version: header is required"
        return None

    def parse(self, route: dict, body: dict) -> Ask:
        for required in ("model", "max_tokens", "messages"):
            if required not in body:
                raise BadRequest(f"{required}: Field required")
        messages = _messages(body["messages"])
        roles = [m["role"] for m in messages]
        if any(r not in ("user", "assistant") for r in roles):
            raise BadRequest("messages: roles must be 'user' or 'assistant'")
        if roles[0] != "user" or any(a == b for a, b in zip(roles, roles[1:], strict=False)):
            raise BadRequest("messages: roles must alternate, starting with 'user'")
        system = body.get("system")
        texts = ([system] if system else []) + [_block_text(m["content"]) for m in messages]
        return Ask(
            stream=bool(body.get("stream")),
            texts=texts,
            max_tokens=int(body["max_tokens"]),
            stops=list(body.get("stop_sequences") or []),
        )

    def error(self, status: int, message: str) -> bytes:
        kind = self._types.get(status, "api_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()

    def _message(self, model: str, answer: Answer, done: bool) -> dict:
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": answer.text}] if done else [],
            "stop_reason": self._stop[answer.finish] if done else None,
            "stop_sequence": answer.stop_sequence if done else None,
            "usage": {
                "input_tokens": answer.prompt_tokens,
                "output_tokens": len(answer.pieces) if done else 1,
            },
        }

    def full(self, model: str, ask: Ask, answer: Answer) -> dict:
        return self._message(model, answer, done=True)

    def stream_head(self, model: str, ask: Ask, answer: Answer) -> list[bytes]:
        start = {"type": "message_start", "message": self._message(model, answer, done=False)}
        block = {"type": "content_block_start", "index": 0, "content_block": _text_block("")}
        return [
            _sse(start, "message_start"),
            _sse(block, "content_block_start"),
            _sse({"type": "ping"}, "ping"),
        ]

    def stream_token(self, model: str, ask: Ask, piece: str, index: int) -> bytes:
        delta = {"type": "content_block_delta", "index": 0, "delta": _text_delta(piece)}
        return _sse(delta, "content_block_delta")

    def stream_tail(self, model: str, ask: Ask, answer: Answer) -> list[bytes]:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop[answer.finish], "stop_sequence": None},
            "usage": {"output_tokens": len(answer.pieces)},
        }
        if answer.stop_sequence:
            delta["delta"]["stop_sequence"] = answer.stop_sequence
        return [
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse(delta, "message_delta"),
            _sse({"type": "message_stop"}, "message_stop"),
        ]


def _text_block(text: str) -> dict:
    return {"type": "text", "text": text}


def _text_delta(text: str) -> dict:
    return {"type": "text_delta", "text": text}


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    raise BadRequest("messages: content must be a string or a list of blocks")


class GeminiWire(Wire):
    kind = "gemini"
    _finish = {"stop": "STOP", "length": "MAX_TOKENS", "stop_sequence": "STOP"}
    _status = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
    }

    def route(self, method: str, path: str, query: str) -> dict | None:
        prefix = "/v1beta/models/"
        if method != "POST" or not path.startswith(prefix) or ":" not in path:
            return None
        model, _, verb = path[len(prefix) :].partition(":")
        if verb == "generateContent":
            return {"model": model, "stream": False}
        if verb == "streamGenerateContent":
            return {"model": model, "stream": True, "sse": "alt=sse" in query.split("&")}
        return None

    def authorized(self, headers: dict[str, str], key: str) -> bool:
        return headers.get("x-goog-api-key") == key

    def parse(self, route: dict, body: dict) -> Ask:
        if route["stream"] and not route["sse"]:
            raise BadRequest("this fake streams server-sent events only: add ?alt=sse")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest("contents is not specified")
        texts = []
        for i, content in enumerate(contents):
            if content.get("role") not in ("user", "model"):
                raise BadRequest(f"contents[{i}].role: must be 'user' or 'model'")
            texts += [str(p.get("text", "")) for p in content.get("parts") or []]
        system = body.get("systemInstruction") or {}
        texts += [str(p.get("text", "")) for p in system.get("parts") or []]
        config = body.get("generationConfig") or {}
        return Ask(
            stream=route["stream"],
            texts=texts,
            max_tokens=config.get("maxOutputTokens"),
            stops=list(config.get("stopSequences") or []),
            n=int(config.get("candidateCount") or 1),
        )

    def error(self, status: int, message: str) -> bytes:
        state = self._status.get(status, "INTERNAL")
        return json.dumps({"error": {"code": status, "message": message, "status": state}}).encode()

    def _response(self, model: str, candidates: list[dict], usage: dict | None) -> dict:
        out: dict = {"candidates": candidates, "modelVersion": model}
        if usage:
            out["usageMetadata"] = usage
        return out

    def full(self, model: str, ask: Ask, answer: Answer) -> dict:
        candidates = [
            {
                "content": {"parts": [{"text": answer.text}], "role": "model"},
                "finishReason": self._finish[answer.finish],
                "index": i,
            }
            for i in range(ask.n)
        ]
        return self._response(model, candidates, self._usage(answer, ask.n))

    def _usage(self, answer: Answer, n: int) -> dict:
        usage = _usage(answer, n)
        return {
            "promptTokenCount": usage["prompt_tokens"],
            "candidatesTokenCount": usage["completion_tokens"],
            "totalTokenCount": usage["total_tokens"],
        }

    def stream_token(self, model: str, ask: Ask, piece: str, index: int) -> bytes:
        candidate = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": index}
        return _sse(self._response(model, [candidate], None))

    def stream_tail(self, model: str, ask: Ask, answer: Answer) -> list[bytes]:
        finish = self._finish[answer.finish]
        candidates = [
            {
                "content": {"parts": [{"text": ""}], "role": "model"},
                "finishReason": finish,
                "index": i,
            }
            for i in range(ask.n)
        ]
        return [_sse(self._response(model, candidates, self._usage(answer, ask.n)))]


WIRES: dict[str, type[Wire]] = {
    "openai": OpenAIWire,
    "anthropic": AnthropicWire,
    "gemini": GeminiWire,
}
