"""The engine interface the HTTP handlers are written against.

An engine turns one prompt plus sampling parameters into a stream of per-choice text deltas
followed by one :class:`Usage`. The embedded CPU engine (``batching.py``) implements it; the
handler tests use a scripted stand-in, so the OpenAI surface is checked without a model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from serving.errors import InvalidRequest


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be >= 1, got {self.max_tokens}", "max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidRequest(
                f"temperature must be in [0, 2], got {self.temperature}", "temperature"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if not 1 <= self.n <= 16:
            raise InvalidRequest(f"n must be in [1, 16], got {self.n}", "n")
        if len(self.stop) > 4 or any(not s for s in self.stop):
            raise InvalidRequest("stop takes at most 4 non-empty strings", "stop")


@dataclass(frozen=True)
class ChoiceDelta:
    """New text for one choice; ``finish_reason`` is set on the choice's last delta."""

    index: int
    text: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class PromptLogprobs:
    """Per-token log-likelihood of a prompt: ``logprobs[0]`` is ``None`` (no context)."""

    tokens: tuple[str, ...]
    offsets: tuple[int, ...]  # character offset of each token in the prompt
    logprobs: tuple[float | None, ...]
    top: tuple[dict[str, float] | None, ...]  # the ``n`` likeliest tokens at each position


@dataclass
class EngineLoad:
    running: int = 0
    waiting: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    served_model_name: str

    def generate(
        self, prompt: str | list[int], params: SamplingParams
    ) -> AsyncIterator[ChoiceDelta | Usage]:
        """Stream deltas for ``params.n`` choices, then exactly one :class:`Usage`.

        ``prompt`` is text or token ids. Raises :class:`serving.errors.InvalidRequest` before
        the first item when the request cannot be served (for example a prompt longer than
        the model's context, or a token id outside the vocabulary), and
        :class:`serving.errors.Overloaded` when the engine's queue is full.
        """
        ...

    def load(self) -> EngineLoad: ...

    # Optional: engines without it answer ``echo`` with ``max_tokens: 0`` with a 400.
    # async def score(self, prompt: str, top_n: int) -> PromptLogprobs

    def ready(self) -> bool: ...
