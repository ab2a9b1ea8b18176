"""``echo`` and ``logprobs`` on ``/v1/completions``: scoring text through the serving API.

What the canary's likelihood probes (and any client measuring perplexity over HTTP) need,
shaped as vLLM answers it: ``echo: true, max_tokens: 0, logprobs: N`` returns the prompt as
the text with each token's log-probability (the first ``None``) and the ``N`` likeliest
alternatives per position, without generating. ``echo`` with generation prefixes the prompt
to the generated text. Log-probabilities of *generated* tokens and ``echo`` on a stream are
not offered by this engine; such requests get a 400 that says so rather than a silent
``null``.
"""

from __future__ import annotations

from serving.engine import api
from serving.engine.protocol import Engine, PromptLogprobs
from serving.errors import InvalidRequest


def check_supported(body: api.CompletionRequest) -> None:
    """Refuse the ``echo`` / ``logprobs`` combinations this engine does not serve."""
    if body.max_tokens == 0 and not body.echo:
        raise InvalidRequest(
            "max_tokens must be at least 1 (0 only with echo=true, to score the prompt)",
            "max_tokens",
        )
    if not (body.echo or body.logprobs is not None):
        return
    if not isinstance(body.single_prompt(), str):
        raise InvalidRequest(
            "echo and logprobs take a text prompt on this engine; send the prompt as text",
            "prompt",
        )
    if body.stream:
        raise InvalidRequest(
            "echo and logprobs are not supported with stream=true on this engine; "
            "send the request without streaming",
            "stream",
        )
    if body.logprobs is not None and not body.scores_prompt_only:
        raise InvalidRequest(
            "this engine returns logprobs for the prompt only: send echo=true with "
            "max_tokens=0 (generated-token logprobs are not supported)",
            "logprobs",
        )


def _shape(scored: PromptLogprobs) -> api.CompletionLogprobs:
    return api.CompletionLogprobs(
        text_offset=list(scored.offsets),
        token_logprobs=list(scored.logprobs),
        tokens=list(scored.tokens),
        top_logprobs=list(scored.top),
    )


async def score_prompt(
    engine: Engine, body: api.CompletionRequest, prompt: str
) -> tuple[api.CompletionChoice, int]:
    """The choice for ``echo`` with ``max_tokens: 0``, and the prompt's token count."""
    score = getattr(engine, "score", None)
    if score is None:
        raise InvalidRequest("this engine cannot score prompts (echo with max_tokens=0)", "echo")
    scored: PromptLogprobs = await score(prompt, body.logprobs or 0)
    logprobs = _shape(scored) if body.logprobs is not None else None
    choice = api.CompletionChoice(index=0, text=prompt, logprobs=logprobs, finish_reason="length")
    return choice, len(scored.tokens)
