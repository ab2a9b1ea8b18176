"""What a partner is, as declared in the serving config, and the adapter contract.

A partner is a commercial AI API the gateway may send ``auto`` traffic to. Its key never
leaves the process environment: the spec holds only the *name* of the variable
(``api_key_env``), :meth:`PartnerSpec.api_key` reads it at request time, and ``to_dict``
(what is persisted, logged, exported as metrics or Dagster metadata) never contains it.

An adapter translates one OpenAI-shaped request (``/v1/chat/completions`` or
``/v1/completions``) into the partner's wire format and the partner's answer back into the
OpenAI shape, including streams (server-sent events in, OpenAI ``chat.completion.chunk`` /
``text_completion`` SSE out).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal, Protocol

from serving.errors import InvalidRequest

PartnerKind = Literal["openai", "anthropic", "gemini"]
KINDS: tuple[str, ...] = ("openai", "anthropic", "gemini")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_FIELDS = {"kind", "base_url", "model", "api_key_env", "timeout_s", "probe_interval_s"}
# Headers whose values are credentials: never shown by ``repr``.
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key"})


@dataclass(frozen=True)
class PartnerSpec:
    name: str
    kind: PartnerKind
    # e.g. https://api.openai.com/v1, https://api.anthropic.com,
    # https://generativelanguage.googleapis.com
    base_url: str
    # the partner's model id, e.g. gpt-4o-mini, claude-3-5-haiku-latest, gemini-2.0-flash
    model: str
    api_key_env: str | None = None  # name of the environment variable holding the key
    timeout_s: float = 30.0
    probe_interval_s: float = 10.0  # active health probe period; 0 disables probes

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InvalidRequest(
                f"partner name {self.name!r} must be lowercase letters, digits, '.', '_' or '-'",
                "name",
            )
        if self.kind not in KINDS:
            raise InvalidRequest(
                f"partner {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}",
                "kind",
            )
        if not self.base_url.startswith(("http://", "https://")):
            raise InvalidRequest(
                f"partner {self.name!r}: base_url must be http(s)://..., got {self.base_url!r}",
                "base_url",
            )
        if self.timeout_s <= 0:
            raise InvalidRequest(f"partner {self.name!r}: timeout_s must be > 0", "timeout_s")
        if self.probe_interval_s < 0:
            raise InvalidRequest(
                f"partner {self.name!r}: probe_interval_s must be >= 0", "probe_interval_s"
            )
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "base_url": self.base_url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "timeout_s": self.timeout_s,
            "probe_interval_s": self.probe_interval_s,
        }

    @classmethod
    def from_dict(cls, name: str, data: dict) -> PartnerSpec:
        unknown = set(data) - _FIELDS
        if unknown:
            raise InvalidRequest(f"partner {name!r}: unknown fields {sorted(unknown)}", "partner")
        missing = {"kind", "base_url", "model"} - set(data)
        if missing:
            raise InvalidRequest(f"partner {name!r}: missing fields {sorted(missing)}", "partner")
        return cls(name=name, **data)


@dataclass(frozen=True)
class UpstreamRequest:
    """One HTTP request to send to a partner (built by an adapter, sent by the gateway)."""

    url: str
    headers: dict[str, str]  # includes the auth header: ``repr`` masks it
    json: dict

    def __repr__(self) -> str:
        shown = {k: "***" if k.lower() in SECRET_HEADERS else v for k, v in self.headers.items()}
        return f"UpstreamRequest(url={self.url!r}, headers={shown!r}, json={self.json!r})"


class StreamTranslator(Protocol):
    """Feeds raw bytes of a partner's streamed response; yields OpenAI SSE bytes.

    ``feed`` may be called with arbitrary chunk boundaries (mid-line, mid-event).
    ``started`` becomes True once at least one content token has been emitted (the point
    after which a broken stream can no longer be retried elsewhere). ``close`` returns the
    final bytes (e.g. ``data: [DONE]\\n\\n``) and raises :class:`PartnerProtocolError`
    when the partner's stream ended without its terminal event (a cut stream); ``feed``
    raises it for an event that is not the partner's format or is an error event.
    """

    started: bool

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...


class PartnerProtocolError(Exception):
    """The partner answered, but not in its documented wire format (malformed JSON, a
    missing field, a stream cut before its terminal event). Counts as a partner failure."""


class Adapter(Protocol):
    kind: str

    def build(self, spec: PartnerSpec, path: str, payload: dict) -> UpstreamRequest:
        """``path`` is ``/v1/chat/completions`` or ``/v1/completions``; ``payload`` the
        client's OpenAI body (``model`` already resolved; ``stream`` honoured). Raises
        InvalidRequest for a body the partner kind cannot express."""
        ...

    def parse(self, spec: PartnerSpec, path: str, payload: dict, status: int, body: bytes) -> dict:
        """A non-streaming 2xx answer -> the OpenAI response dict for ``path``
        (``model`` set to the client's requested name). Raises PartnerProtocolError, also
        for a non-2xx ``status`` (its message names the status and the partner's error)."""
        ...

    def stream(self, spec: PartnerSpec, path: str, payload: dict) -> StreamTranslator: ...

    def probe(self, spec: PartnerSpec) -> UpstreamRequest:
        """The cheapest request that proves the partner answers (e.g. max_tokens=1)."""
        ...
