"""Admission control of the embedded engine: what may enter the queue, and prompt preparation
off the event loop.

The event loop that parses requests also answers ``/health``; a 900k-character prompt takes
about a second to tokenize, so tokenization runs in a small thread pool (the Rust tokenizer
releases the GIL) and the loop keeps turning. Three budgets keep work bounded, each answered
at once with :class:`~serving.errors.Overloaded` (429 + ``Retry-After``) when spent, never
by waiting without bound:

* characters being tokenized (``max_tokenizing_chars``);
* requests waiting for a batch (``max_queued_requests``);
* tokens those requests will cost, prompt plus ``max_tokens`` per choice
  (``max_queued_tokens``), so a few huge requests fill the queue as many small ones do;
* the wait those requests add: full batches queued ahead times the recent batch duration
  (an average), at most ``max_queue_wait_s``, so under overload an admitted request is
  served in bounded time and the rest are told when to come back instead.

Before any of that, a prompt that cannot fit the context is refused in O(1): no token of
this vocabulary decodes to more than ``max_chars_per_token`` characters, so a text longer
than ``4 x max_chars_per_token x context`` characters cannot fit (the factor 4 leaves room
for normalisers that merge characters). It is a 400, as an over-long tokenized prompt is.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from serving.errors import InvalidRequest, Overloaded

T = TypeVar("T")

#: Margin on the characters-per-token bound (normalisers may merge characters).
CHAR_BOUND_FACTOR = 4


@dataclass(frozen=True)
class AdmissionLimits:
    max_queued_requests: int = 256
    max_queued_tokens: int | None = None  # default: 4 full batches of full-context rows
    max_tokenizing_chars: int = 4_000_000
    tokenizer_threads: int = 2
    max_queue_wait_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_queued_requests", "max_tokenizing_chars", "tokenizer_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_wait_s <= 0:
            raise ValueError(f"max_queue_wait_s must be > 0, got {self.max_queue_wait_s}")
        if self.max_queued_tokens is not None and self.max_queued_tokens < 1:
            raise ValueError(f"max_queued_tokens must be >= 1, got {self.max_queued_tokens}")


@dataclass
class Ticket:
    """One admitted request's share of the queue budget; released exactly once."""

    tokens: int
    released: bool = False


class Admission:
    def __init__(
        self,
        limits: AdmissionLimits,
        *,
        max_model_len: int,
        max_batch_size: int,
        vocab_size: int,
        max_chars_per_token: int,
        tokenize: Callable[[str], list[int]],
    ) -> None:
        self.limits = limits
        self.max_model_len, self.vocab_size = max_model_len, vocab_size
        self.max_batch_size = max_batch_size
        self.max_prompt_chars = CHAR_BOUND_FACTOR * max(1, max_chars_per_token) * max_model_len
        self.max_queued_tokens = limits.max_queued_tokens or 4 * max_batch_size * max_model_len
        self._tokenize = tokenize
        self._pool = ThreadPoolExecutor(limits.tokenizer_threads, thread_name_prefix="tokenize")
        self._tokenizing = 0  # characters in the pool; touched on the event loop only
        self._lock = threading.Lock()  # the queue counters are released by the scheduler
        self.queued_requests = 0
        self.queued_tokens = 0
        self.batch_seconds = 0.0  # moving average of batch durations (see note_batch)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """Token ids of ``prompt``, tokenized off the event loop; 400 or 429 when refused."""
        if not isinstance(prompt, str):
            bad = [t for t in prompt if t >= self.vocab_size]
            if bad:
                raise InvalidRequest(
                    f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})",
                    "prompt",
                )
            return list(prompt)
        return await self.tokenized(prompt, self._tokenize)

    async def tokenized(self, prompt: str, tokenize: Callable[[str], T]) -> T:
        """``tokenize(prompt)`` in the pool, under the prompt-size and tokenizing bounds."""
        if len(prompt) > self.max_prompt_chars:
            raise InvalidRequest(
                f"prompt of {len(prompt)} characters cannot fit the model's context of "
                f"{self.max_model_len} tokens (at most {self.max_prompt_chars} characters); "
                "shorten it",
                "prompt",
            )
        if self._tokenizing and self._tokenizing + len(prompt) > self.limits.max_tokenizing_chars:
            raise Overloaded(
                f"the engine is tokenizing {self._tokenizing} characters already; retry shortly",
                self.retry_after_s(),
            )
        self._tokenizing += len(prompt)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, tokenize, prompt)
        finally:
            self._tokenizing -= len(prompt)

    def check_logit_bias(self, bias: tuple[tuple[int, float], ...]) -> None:
        for token, _ in bias:
            if token >= self.vocab_size:
                raise InvalidRequest(
                    f"logit_bias token id {token} is outside the vocabulary "
                    f"(0..{self.vocab_size - 1})",
                    "logit_bias",
                )

    def check_room(self) -> None:
        """Shed before tokenizing when the queue is full by count or by wait: the cheap case."""
        if self.queued_requests >= self.limits.max_queued_requests:
            raise Overloaded(
                f"the engine's queue is full ({self.queued_requests} requests waiting); "
                "retry shortly",
                self.retry_after_s(),
            )
        wait = self.queue_wait_s()
        if wait > self.limits.max_queue_wait_s:
            raise Overloaded(
                f"the engine's queue holds about {wait:.1f} s of work (limit "
                f"{self.limits.max_queue_wait_s:g} s); retry shortly",
                self.retry_after_s(),
            )

    def queue_wait_s(self) -> float:
        """How long a request admitted now would wait: full batches queued ahead of it times
        the recent batch duration (static batching: a partial batch goes with the next)."""
        return (self.queued_requests // self.max_batch_size) * self.batch_seconds

    def note_batch(self, seconds: float) -> None:
        self.batch_seconds = (
            seconds if not self.batch_seconds else (0.8 * self.batch_seconds + 0.2 * seconds)
        )

    def admit(self, tokens: int) -> Ticket:
        """A place in the queue for a request costing ``tokens``, or :class:`Overloaded`."""
        with self._lock:
            if self.queued_requests >= self.limits.max_queued_requests:
                raise Overloaded(
                    f"the engine's queue is full ({self.queued_requests} requests waiting); "
                    "retry shortly",
                    self.retry_after_s(),
                )
            if self.queued_requests and self.queued_tokens + tokens > self.max_queued_tokens:
                raise Overloaded(
                    f"the engine's queue is full ({self.queued_tokens} tokens waiting); "
                    "retry shortly",
                    self.retry_after_s(),
                )
            self.queued_requests += 1
            self.queued_tokens += tokens
        return Ticket(tokens)

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            self.queued_requests -= 1
            self.queued_tokens -= ticket.tokens

    def accepting(self) -> bool:
        """Readiness: room for more work (below 90% of each queue budget)."""
        return (
            self.queued_requests < 0.9 * self.limits.max_queued_requests
            and self.queued_tokens < 0.9 * self.max_queued_tokens
        )

    def retry_after_s(self) -> float:
        return max(1.0, math.ceil(self.queue_wait_s() or self.batch_seconds))
