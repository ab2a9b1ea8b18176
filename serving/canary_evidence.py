"""What a canary step must have seen before it may pass, and the probes that supply it.

A step's verdict is only as good as the requests behind it: "error rate 0.0%" over zero
requests is no evidence. :class:`Evidence` counts the canary requests a step saw through
the gateway, split by where they came from: ``user`` (the live route's traffic to the
canary) and ``probe`` (requests the controller sent itself). A step needs
``min_requests`` of them; with too little user traffic the controller tops up with
probes, or, with no probes to send, holds the step longer; still short, the verdict is
``inconclusive``, which never promotes.

Probes go through the gateway, not around it, on a probe route (:func:`probe_route`)
whose only backend is the canary, so they exercise the same path as users and are counted
by the gateway's own per-route metrics, apart from user traffic. Two kinds:

* task probes (:class:`Probe`): a prompt and its expected answer, scored by exact match;
* text probes: held-out texts scored by likelihood through the OpenAI completions API
  (``echo: true, logprobs: 0, max_tokens: 0``, as vLLM serves it). They work on any
  corpus: canary and stable score the same texts, and :func:`compare_likelihood` applies
  a paired non-inferiority rule to the per-text differences of mean negative
  log-likelihood per token.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import httpx

from observability.retry import exponential, retry_call
from serving.gateway.client import BackendStats


class Inconclusive(Exception):
    """A step ended without enough evidence to judge the canary either way."""


@dataclass(frozen=True)
class Probe:
    prompt: str
    expected: str


@dataclass(frozen=True)
class ProbeSet:
    """The held-out material a rollout may probe with; ``source`` says where it came from."""

    tasks: tuple[Probe, ...] = ()
    texts: tuple[str, ...] = ()
    source: str = "none"

    def __len__(self) -> int:
        return len(self.tasks) + len(self.texts)


def probe_route(route: str) -> str:
    """The gateway route that reaches only the canary of ``route`` during a rollout."""
    return f"{route}.canary-probe"


@dataclass(frozen=True)
class Evidence:
    user_requests: int
    user_errors: int
    probe_requests: int
    probe_errors: int
    min_requests: int
    held_s: float = 0.0  # extra time the step held, waiting for user traffic

    @property
    def requests(self) -> int:
        return self.user_requests + self.probe_requests

    @property
    def errors(self) -> int:
        return self.user_errors + self.probe_errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def sufficient(self) -> bool:
        return self.requests >= self.min_requests

    @property
    def source(self) -> str:
        kinds = [k for k, n in (("user", self.user_requests), ("probe", self.probe_requests)) if n]
        return "+".join(kinds) or "none"

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "source": self.source,
        }


@dataclass(frozen=True)
class LikelihoodComparison:
    """Paired comparison of canary and stable on the same texts (nats per token)."""

    texts: int
    canary_nll: float
    stable_nll: float
    mean_diff: float  # canary minus stable: > 0 means the canary finds the texts less likely
    lower: float
    upper: float
    margin: float
    verdict: str  # "pass" | "fail" | "inconclusive"

    def to_dict(self) -> dict:
        return asdict(self)


def compare_likelihood(
    canary: list[float], stable: list[float], margin: float, confidence: float, min_texts: int
) -> LikelihoodComparison:
    """Non-inferiority of the canary at ``margin`` nats/token, one-sided at ``confidence``.

    pass: the upper confidence bound of the mean difference is within the margin; fail: the
    lower bound is beyond it; otherwise (or with fewer than ``min_texts`` texts) the sample
    cannot tell, and the verdict is ``inconclusive``.
    """
    if len(canary) != len(stable):
        raise ValueError(f"paired scores differ in length: {len(canary)} vs {len(stable)}")
    n = len(canary)
    diffs = [c - s for c, s in zip(canary, stable, strict=True)]
    mean = statistics.fmean(diffs) if diffs else 0.0
    spread = statistics.stdev(diffs) / math.sqrt(n) if n >= 2 else math.inf
    z = statistics.NormalDist().inv_cdf(confidence)
    lower, upper = mean - z * spread, mean + z * spread
    if n < min_texts:
        verdict = "inconclusive"
    elif upper <= margin:
        verdict = "pass"
    elif lower > margin:
        verdict = "fail"
    else:
        verdict = "inconclusive"
    return LikelihoodComparison(
        texts=n,
        canary_nll=statistics.fmean(canary) if canary else math.nan,
        stable_nll=statistics.fmean(stable) if stable else math.nan,
        mean_diff=mean,
        lower=lower,
        upper=upper,
        margin=margin,
        verdict=verdict,
    )


class ProbeClient:
    """Sends probes to one OpenAI-compatible endpoint (the gateway or an engine)."""

    def __init__(self, url: str, model: str, timeout_s: float, attempts: int = 3) -> None:
        self.url, self.model, self.attempts = url.rstrip("/"), model, attempts
        self._http = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def _post(self, body: dict) -> dict:
        def post() -> dict:
            response = self._http.post(
                f"{self.url}/v1/completions", json={"model": self.model, **body}
            )
            response.raise_for_status()
            return response.json()

        return retry_call(
            post,
            attempts=self.attempts,
            delay_s=exponential(0.5),
            retry_on=lambda exc: (
                isinstance(exc, httpx.TransportError)
                or (isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 500)
            ),
        )

    def answer(self, probe: Probe, max_tokens: int) -> str:
        body = {"prompt": probe.prompt, "temperature": 0, "max_tokens": max_tokens, "stop": ["\n"]}
        return self._post(body)["choices"][0]["text"].strip()

    def nll(self, text: str) -> float:
        """Mean negative log-likelihood per token of ``text`` (the first token has no context)."""
        body = {"prompt": text, "echo": True, "logprobs": 0, "max_tokens": 0, "temperature": 0}
        logprobs = self._post(body)["choices"][0].get("logprobs") or {}
        scored = [lp for lp in logprobs.get("token_logprobs") or [] if lp is not None]
        if not scored:
            raise ValueError(
                f"{self.url} returned no prompt logprobs for a {len(text)}-character probe "
                "text; the engine must support echo with logprobs (vLLM and the embedded "
                "engine do), and the text must be at least two tokens long"
            )
        return -statistics.fmean(scored)


def probe_accuracy(
    url: str, probes: Sequence[Probe], model: str, max_tokens: int, timeout_s: float
) -> float:
    """Exact-match accuracy of greedy answers from the endpoint at ``url`` (1.0 for none)."""
    if not probes:
        return 1.0
    client = ProbeClient(url, model, timeout_s)
    try:
        answers = [client.answer(p, max_tokens) for p in probes]
    finally:
        client.close()
    return sum(a == p.expected for a, p in zip(answers, probes, strict=True)) / len(probes)


def text_nlls(url: str, texts: Sequence[str], model: str, timeout_s: float) -> list[float]:
    """Mean negative log-likelihood per token of each text, scored by the endpoint at ``url``."""
    client = ProbeClient(url, model, timeout_s)
    try:
        return [client.nll(text) for text in texts]
    finally:
        client.close()


def summary(stats: BackendStats) -> dict:
    return {
        "requests": stats.requests,
        "errors": stats.errors,
        "error_rate": stats.error_rate,
        "p95_s": stats.quantile(0.95),
    }
