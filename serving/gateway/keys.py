"""Client API keys of the gateway: stored hashed, with per-key request and token quotas.

Off by default on one machine; one setting (``--require-api-keys`` or
``MLOPS_GATEWAY_REQUIRE_API_KEYS=1``, set in the Kubernetes manifests) makes every OpenAI
call need ``Authorization: Bearer <key>``. Keys are created through the admin API, which
returns the key once; the gateway state keeps only its SHA-256. A key is 256 random bits,
so a fast hash is enough (a slow password hash defends guessable secrets, and would cost
every request); lookups go by hash, so no comparison leaks a prefix.

Quotas are per key over a sliding minute: ``rpm`` requests and ``tpm`` tokens (prompt plus
completion as the backend reported in ``usage``; a stream, whose usage the gateway does not
parse, is charged its ``max_tokens`` upper bound). Over either, the request is answered 429
with ``Retry-After`` (when the oldest entry leaves the minute) and never reaches a backend.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.errors import InvalidRequest, Overloaded, Unauthorized

WINDOW_S = 60.0
PREFIX = "sk-mlops-"


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class ClientKey:
    name: str
    digest: str
    rpm: int | None = None
    tpm: int | None = None
    created: float = 0.0
    requests: deque[float] = field(default_factory=deque, repr=False)
    tokens: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        for what in ("rpm", "tpm"):
            value = getattr(self, what)
            if value is not None and value < 1:
                raise InvalidRequest(f"{what} must be >= 1 (or null: no limit), got {value}", what)

    def to_dict(self) -> dict:
        return {"sha256": self.digest, "rpm": self.rpm, "tpm": self.tpm, "created": self.created}

    def view(self, now: float) -> dict:
        requests, tokens = self._usage(now)
        return {
            "rpm": self.rpm,
            "tpm": self.tpm,
            "created": self.created,
            "last_minute": {"requests": requests, "tokens": tokens},
        }

    def check(self, now: float) -> None:
        requests, tokens = self._usage(now)
        over, oldest = None, now
        if self.rpm is not None and requests >= self.rpm:
            over, oldest = f"{self.rpm} requests per minute", self.requests[0]
        elif self.tpm is not None and tokens >= self.tpm:
            over, oldest = f"{self.tpm} tokens per minute", self.tokens[0][0]
        if over is not None:
            retry = max(1.0, oldest + WINDOW_S - now)
            raise Overloaded(
                f"API key `{self.name}` is over its limit of {over}; retry after Retry-After",
                retry,
                None,
                "rate_limit_exceeded",
            )

    def charge_request(self, now: float) -> None:
        self.requests.append(now)

    def charge_tokens(self, now: float, tokens: int) -> None:
        if tokens > 0:
            self.tokens.append((now, tokens))

    def _usage(self, now: float) -> tuple[int, int]:
        horizon = now - WINDOW_S
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= horizon:
            self.tokens.popleft()
        return len(self.requests), sum(t for _, t in self.tokens)


@dataclass
class KeyTable:
    required: bool = False
    keys: dict[str, ClientKey] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    _by_digest: dict[str, ClientKey] = field(default_factory=dict, repr=False)

    def create(self, name: str, rpm: int | None = None, tpm: int | None = None) -> str:
        """A new key for ``name`` (replacing its old one); the secret is returned only here."""
        secret = PREFIX + secrets.token_urlsafe(32)
        self._put(ClientKey(name, key_hash(secret), rpm, tpm, time.time()))
        return secret

    def remove(self, name: str) -> None:
        key = self.keys.pop(name, None)
        if key is None:
            raise InvalidRequest(f"no API key named {name!r}", "name")
        self._by_digest.pop(key.digest, None)

    def authenticate(self, authorization: bytes | None) -> ClientKey:
        scheme, _, secret = (authorization or b"").decode("latin-1").partition(" ")
        key = self._by_digest.get(key_hash(secret.strip())) if scheme.lower() == "bearer" else None
        if key is None:
            raise Unauthorized(
                "missing or unknown API key: send `Authorization: Bearer <key>` with a key "
                "from the gateway's admin (POST /admin/keys/{name})",
                None,
                "invalid_api_key",
            )
        now = self.clock()
        key.check(now)
        key.charge_request(now)
        return key

    def name_of(self, authorization: bytes | None) -> str:
        """The key's name for metrics (no secret ever becomes a label)."""
        _, _, secret = (authorization or b"").decode("latin-1").partition(" ")
        key = self._by_digest.get(key_hash(secret.strip()))
        return key.name if key is not None else "unknown"

    def status(self) -> dict:
        now = self.clock()
        return {"required": self.required, "keys": {n: k.view(now) for n, k in self.keys.items()}}

    def to_dict(self) -> dict:
        return {"api_keys": {n: k.to_dict() for n, k in self.keys.items()}}

    def load_dict(self, data: dict) -> None:
        for name, k in data.get("api_keys", {}).items():
            self._put(ClientKey(name, k["sha256"], k.get("rpm"), k.get("tpm"), k.get("created", 0)))

    def replace_dict(self, data: dict) -> None:
        """Become exactly ``data``; a key whose hash is unchanged keeps its last-minute usage."""
        fresh = KeyTable(self.required, clock=self.clock)
        fresh.load_dict(data)
        for name, key in fresh.keys.items():
            old = self.keys.get(name)
            if old is not None and old.digest == key.digest:
                key.requests, key.tokens = old.requests, old.tokens
        self.keys, self._by_digest = fresh.keys, fresh._by_digest

    def _put(self, key: ClientKey) -> None:
        old = self.keys.get(key.name)
        if old is not None:
            self._by_digest.pop(old.digest, None)
        self.keys[key.name] = key
        self._by_digest[key.digest] = key
