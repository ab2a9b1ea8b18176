"""Paired non-inferiority tests over per-example scores, by bootstrap.

Challenger and champion are scored on the same examples, so the comparison is paired: the
bootstrap resamples *examples* (rows of both models together), which keeps the correlation
between the two models' scores and gives a much tighter interval than comparing two
independent means.

Each test is stated as a "loss" of the challenger relative to the champion (positive =
worse) and a non-inferiority margin on that loss:

* ``passed``: the upper confidence bound of the loss is within the margin (non-inferiority
  shown at the configured confidence);
* ``failed``: the lower confidence bound exceeds the margin (inferiority shown);
* ``inconclusive``: the interval straddles the margin, or there are fewer than
  ``min_examples`` paired examples.

Bounds are one-sided at ``confidence`` each (the 5th and 95th bootstrap percentiles for 0.95).
The resampling RNG is seeded, so a verdict is a pure function of the scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Verdict = Literal["passed", "failed", "inconclusive"]


@dataclass(frozen=True)
class PairedTestConfig:
    margin: float  # largest loss still "not worse", in the loss's own unit
    confidence: float = 0.95
    min_examples: int = 20
    resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be within [0.5, 1), got {self.confidence}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.min_examples < 2:
            raise ValueError(f"min_examples must be >= 2, got {self.min_examples}")
        if self.resamples < 100:
            raise ValueError(f"resamples must be >= 100, got {self.resamples}")


@dataclass(frozen=True)
class PairedTest:
    """The outcome of one paired test; ``loss``, bounds and margin share one unit."""

    metric: str
    verdict: Verdict
    n: int
    loss: float  # challenger's loss against the champion (positive = worse)
    low: float  # one-sided lower confidence bound of the loss
    high: float  # one-sided upper confidence bound of the loss
    margin: float
    confidence: float
    unit: str

    def as_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        within = {
            "passed": "upper bound within",
            "failed": "lower bound beyond",
            "inconclusive": "interval straddles",
        }[self.verdict]
        if self.n == 0:
            return f"{self.metric}: no paired examples to compare"
        return (
            f"{self.metric}: loss {self.loss:+.4f} {self.unit}, {self.confidence:.0%} bounds "
            f"[{self.low:+.4f}, {self.high:+.4f}] on n={self.n} paired examples; "
            f"{within} margin {self.margin:.4f}"
        )


def _verdict(n: int, low: float, high: float, cfg: PairedTestConfig) -> Verdict:
    if n < cfg.min_examples or not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if high <= cfg.margin:
        return "passed"
    if low > cfg.margin:
        return "failed"
    return "inconclusive"


def _bounds(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    return float(np.quantile(stats, 1 - confidence)), float(np.quantile(stats, confidence))


def _indices(n: int, cfg: PairedTestConfig) -> np.ndarray:
    return np.random.default_rng(cfg.seed).integers(0, n, size=(cfg.resamples, n))


def accuracy_loss(
    challenger: Sequence[float], champion: Sequence[float], cfg: PairedTestConfig, metric: str
) -> PairedTest:
    """Paired test on per-example correctness (0/1): loss = champion's accuracy - challenger's."""
    a, b = np.asarray(challenger, float), np.asarray(champion, float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {a.shape} vs {b.shape}")
    n = len(a)
    if n == 0:
        return PairedTest(
            metric,
            "inconclusive",
            0,
            math.nan,
            math.nan,
            math.nan,
            cfg.margin,
            cfg.confidence,
            "accuracy points",
        )
    diff = b - a
    low, high = _bounds(diff[_indices(n, cfg)].mean(axis=1), cfg.confidence)
    return PairedTest(
        metric,
        _verdict(n, low, high, cfg),
        n,
        float(diff.mean()),
        low,
        high,
        cfg.margin,
        cfg.confidence,
        "accuracy points",
    )


def log_perplexity_loss(
    challenger_nll: Sequence[float],
    champion_nll: Sequence[float],
    tokens: Sequence[int],
    cfg: PairedTestConfig,
) -> PairedTest:
    """Paired test on per-text summed NLL: loss = challenger's log perplexity - champion's.

    Resampling texts and dividing by the resampled token count is the bootstrap of the ratio
    estimator: long texts weigh as many tokens as they have, exactly as in perplexity itself.
    """
    a, b, w = (np.asarray(x, float) for x in (challenger_nll, champion_nll, tokens))
    if not a.shape == b.shape == w.shape:
        raise ValueError(f"paired scores differ in length: {a.shape}, {b.shape}, {w.shape}")
    n = len(a)
    if n == 0 or w.sum() <= 0:
        return PairedTest(
            "log perplexity",
            "inconclusive",
            0,
            math.nan,
            math.nan,
            math.nan,
            cfg.margin,
            cfg.confidence,
            "nats/token",
        )
    diff = a - b
    idx = _indices(n, cfg)
    low, high = _bounds(diff[idx].sum(axis=1) / w[idx].sum(axis=1), cfg.confidence)
    return PairedTest(
        "log perplexity",
        _verdict(n, low, high, cfg),
        n,
        float(diff.sum() / w.sum()),
        low,
        high,
        cfg.margin,
        cfg.confidence,
        "nats/token",
    )
