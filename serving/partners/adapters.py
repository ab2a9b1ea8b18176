"""Partner adapters: OpenAI-shaped requests in each partner kind's wire format.

Three kinds, one :class:`~serving.partners.spec.Adapter` each (:func:`adapter_for`):

- ``openai``: any OpenAI-compatible API. The body passes through with ``model`` swapped for
  the partner's model id; the answer comes back under the client's model name.
- ``anthropic``: the Messages API (``POST /v1/messages``). System messages become the
  top-level ``system``, consecutive turns of one role are merged (the API wants them to
  alternate), and ``max_tokens``, required there, defaults to 256.
- ``gemini``: the generateContent API (``POST /v1beta/models/{model}:generateContent``,
  ``:streamGenerateContent?alt=sse`` for streams). Roles ``user``/``model``, system messages
  become ``systemInstruction``, sampling and ``n`` go in ``generationConfig``.

``/v1/completions`` requests go to Anthropic and Gemini as one user message. What a kind
cannot express (``n`` > 1 for Anthropic, tools or logprobs for either) is refused with
:class:`~serving.errors.InvalidRequest` before anything is sent. Answers and streams are read
back by :mod:`serving.partners.translate`. The key is read from the environment when a request
is built and goes only into that kind's auth header.
"""

from __future__ import annotations

from typing import Any

from serving.errors import InvalidRequest
from serving.partners.spec import Adapter, PartnerSpec, UpstreamRequest
from serving.partners.translate import CHAT, COMPLETIONS, Translator, read_answer, translator

ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_DEFAULT_MAX_TOKENS = 256
# Fields that change what the answer is, which only the openai kind can honour.
_OPENAI_ONLY = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "echo",
    "suffix",
    "logit_bias",
)


def _check_path(path: str) -> None:
    if path not in (CHAT, COMPLETIONS):
        raise InvalidRequest(f"partners serve {CHAT} and {COMPLETIONS}, not {path}", "path")


def _stops(payload: dict) -> list[str]:
    stop = payload.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequest("stop must be a string or a list of strings", "stop")
    return stops


def _positive_int(payload: dict, name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"{name} must be a positive integer, got {value!r}", name)
    return value


def _max_tokens(payload: dict) -> int | None:
    name = "max_tokens" if "max_tokens" in payload else "max_completion_tokens"
    return _positive_int(payload, name)


def _text(content: Any, kind: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequest(f"{kind} partners take text content parts only", "messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise InvalidRequest(f"{kind} partners need message content as text", "messages")


def _turns(payload: dict, path: str, kind: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(system texts, [(role, text)]) with consecutive turns of one role merged."""
    for name in _OPENAI_ONLY:
        if payload.get(name):
            raise InvalidRequest(f"{kind} partners do not support {name!r}", name)
    if path == COMPLETIONS:
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InvalidRequest(f"{kind} partners take one prompt string", "prompt")
        return [], [("user", prompt)]
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", "messages")
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append(_text(message.get("content"), kind))
        elif role in ("user", "assistant"):
            text = _text(message.get("content"), kind)
            if turns and turns[-1][0] == role:
                turns[-1] = (role, f"{turns[-1][1]}\n\n{text}")
            else:
                turns.append((role, text))
        else:
            raise InvalidRequest(
                f"{kind} partners take system, user and assistant messages, not role {role!r}",
                "messages",
            )
    if not turns:
        raise InvalidRequest(f"{kind} partners need at least one user message", "messages")
    return system, turns


def _auth(header: str, value: str | None) -> dict[str, str]:
    return {header: value} if value else {}


class _Adapter:
    """What every kind shares: answers and streams are read back by kind, probes are tiny."""

    kind = ""

    def build(self, spec: PartnerSpec, path: str, payload: dict) -> UpstreamRequest:
        raise NotImplementedError

    def parse(self, spec: PartnerSpec, path: str, payload: dict, status: int, body: bytes) -> dict:
        return read_answer(spec, path, payload, status, body)

    def stream(self, spec: PartnerSpec, path: str, payload: dict) -> Translator:
        return translator(spec, path, payload)

    def probe(self, spec: PartnerSpec) -> UpstreamRequest:
        ping = {"model": spec.model, "messages": [{"role": "user", "content": "ping"}]}
        return self.build(spec, CHAT, {**ping, "max_tokens": 1})


class OpenAIAdapter(_Adapter):
    kind = "openai"

    def build(self, spec: PartnerSpec, path: str, payload: dict) -> UpstreamRequest:
        _check_path(path)
        key = spec.api_key()
        headers = {
            "content-type": "application/json",
            **_auth("authorization", key and f"Bearer {key}"),
        }
        body = {**payload, "model": spec.model}
        return UpstreamRequest(spec.base_url + path.removeprefix("/v1"), headers, body)


class AnthropicAdapter(_Adapter):
    kind = "anthropic"

    def build(self, spec: PartnerSpec, path: str, payload: dict) -> UpstreamRequest:
        _check_path(path)
        if (_positive_int(payload, "n") or 1) != 1:
            raise InvalidRequest("anthropic partners answer one choice: n must be 1", "n")
        system, turns = _turns(payload, path, self.kind)
        if turns[0][0] != "user":
            raise InvalidRequest(
                "anthropic partners need the first turn to be a user message", "messages"
            )
        max_tokens = _max_tokens(payload)
        body: dict[str, Any] = {
            "model": spec.model,
            "max_tokens": ANTHROPIC_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
            "messages": [{"role": role, "content": text} for role, text in turns],
        }
        if system:
            body["system"] = "\n\n".join(system)
        for name in ("temperature", "top_p"):
            if payload.get(name) is not None:
                body[name] = payload[name]
        if stops := _stops(payload):
            body["stop_sequences"] = stops
        if payload.get("stream"):
            body["stream"] = True
        headers = {
            "content-type": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
            **_auth("x-api-key", spec.api_key()),
        }
        return UpstreamRequest(f"{spec.base_url}/v1/messages", headers, body)


class GeminiAdapter(_Adapter):
    kind = "gemini"

    def build(self, spec: PartnerSpec, path: str, payload: dict) -> UpstreamRequest:
        _check_path(path)
        system, turns = _turns(payload, path, self.kind)
        body: dict[str, Any] = {
            "contents": [
                {"role": "model" if role == "assistant" else "user", "parts": [{"text": text}]}
                for role, text in turns
            ]
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": text} for text in system]}
        config = {
            "maxOutputTokens": _max_tokens(payload),
            "temperature": payload.get("temperature"),
            "topP": payload.get("top_p"),
            "stopSequences": _stops(payload) or None,
            "candidateCount": _positive_int(payload, "n"),
        }
        if config := {k: v for k, v in config.items() if v is not None}:
            body["generationConfig"] = config
        model = spec.model.removeprefix("models/")
        verb = "streamGenerateContent?alt=sse" if payload.get("stream") else "generateContent"
        headers = {"content-type": "application/json", **_auth("x-goog-api-key", spec.api_key())}
        return UpstreamRequest(f"{spec.base_url}/v1beta/models/{model}:{verb}", headers, body)


_ADAPTERS = {a.kind: a for a in (OpenAIAdapter(), AnthropicAdapter(), GeminiAdapter())}


def adapter_for(kind: str) -> Adapter:
    try:
        return _ADAPTERS[kind]
    except KeyError:
        kinds = ", ".join(_ADAPTERS)
        raise InvalidRequest(f"unknown partner kind {kind!r}; use one of {kinds}", "kind") from None
