"""Request and response shapes of the OpenAI-compatible API, as vLLM serves it.

Only the fields the engine honours are declared; unknown fields are ignored, as vLLM does,
so newer clients keep working. Conversion to :class:`SamplingParams` happens here, once.

Every declared field is validated here, at the boundary, with the ranges vLLM and OpenAI
use, so a bad value is a 400 naming the field before the request can reach a batch (where
it would fail its batch-mates too): ``seed`` within int64 (vLLM's bound, what
``torch.Generator`` takes), ``temperature`` in [0, 2], ``top_p`` in (0, 1], ``max_tokens``
>= 1, ``n`` in [1, 16], at most 4 non-empty ``stop`` strings, ``logit_bias`` token ids >= 0
with biases in [-100, 100] (at most 300 entries, as OpenAI). A completion ``prompt`` is a
string, a list of token ids (``[1, 2, 3]``) or a one-element list of either; the engine
checks token ids against its vocabulary, which it alone knows.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.engine.protocol import SamplingParams, Usage


class StreamOptions(BaseModel):
    include_usage: bool = False


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_N = 16
MAX_STOP = 4
MAX_LOGIT_BIAS = 300


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else (stop or [])
        if len(strings) > MAX_STOP or any(not s for s in strings):
            raise ValueError(f"at most {MAX_STOP} non-empty strings")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if not bias:
            return bias
        if len(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries, got {len(bias)}")
        for token, value in bias.items():
            if not token.isdigit() or len(token) > 18:
                raise ValueError(f"keys are token ids (non-negative integers), got {token!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"biases must be in [-100, 100], got {value} for {token}")
        return bias

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        bias = tuple(sorted((int(t), float(v)) for t, v in (self.logit_bias or {}).items()))
        return SamplingParams(
            max_tokens=self.max_tokens if self.max_tokens is not None else default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=stop,
            n=self.n,
            seed=self.seed,
            logit_bias=bias,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _token_ids(value: list) -> list[int] | None:
    """``value`` as token ids if it is a non-empty list of non-negative ints (bools are not)."""
    if value and all(type(v) is int for v in value):
        if min(value) < 0 or max(value) > INT64_MAX:
            raise ValueError("token ids must be non-negative integers")
        return value
    return None


class CompletionRequest(_Sampling):
    prompt: Any
    # 0 only with ``echo``: score the prompt without generating (checked in engine/echo.py)
    max_tokens: int | None = Field(default=None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, prompt: Any) -> str | list[int]:
        """One prompt, as vLLM accepts it: text, token ids, or a list holding one of those."""
        if isinstance(prompt, str):
            return prompt
        if not isinstance(prompt, list) or not prompt:
            raise ValueError("must be a string, a list of token ids, or a list of one of those")
        if (ids := _token_ids(prompt)) is not None:
            return ids
        if len(prompt) != 1:
            raise ValueError(
                f"this engine takes one prompt per request, got a list of {len(prompt)}; "
                "send one request per prompt"
            )
        (only,) = prompt
        if isinstance(only, str):
            return only
        if isinstance(only, list) and (ids := _token_ids(only)) is not None:
            return ids
        raise ValueError("must be a string, a list of token ids, or a list of one of those")

    def single_prompt(self) -> str | list[int]:
        return self.prompt

    @property
    def scores_prompt_only(self) -> bool:
        """``echo`` with ``max_tokens: 0``: the prompt's log-likelihood, no generation (as vLLM)."""
        return self.echo and self.max_tokens == 0


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return super().sampling(default_max_tokens)


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> UsageInfo:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completions logprobs; the first token has no context, so ``None``."""

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sovereign-mlops"
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
