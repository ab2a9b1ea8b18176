"""The promotion gate: may a challenger replace the champion?

Two kinds of rule, both in ``GateConfig``:

* absolute floors, so a model that learned nothing never ships even when there is no
  champion to compare with: perplexity at most ``max_perplexity`` (by default half the
  vocabulary size: guessing uniformly scores the whole vocabulary, a model that learned
  nothing scores near or above it) and, when task suites exist, accuracy at least
  ``min_exact_match``;
* against the champion, a paired non-inferiority test on the same examples
  (``evaluation.stats``): on the task suites' per-example correctness when there are
  suites (margin ``exact_match_tolerance`` accuracy points), on the held-out texts'
  per-example log-likelihood otherwise (margin ``perplexity_tolerance`` as a relative
  perplexity increase). The basis is recorded (``gate.basis``); with suites the perplexity
  test is still computed and reported, but does not decide.

The verdict is ``passed``, ``failed`` or ``inconclusive`` (too few examples, or an interval
that straddles the margin). ``inconclusive_policy`` says what an inconclusive verdict means
for the run: ``keep_champion`` (the challenger is not promoted; the run goes on and the
champion keeps serving) or ``require_force`` (the run fails until an operator promotes the
version explicitly, with a reason).

``benchmarks/gate_calibration.py`` measures the defaults on real models (figures in
``benchmarks/RESULTS.md``): clearly worse challengers fail every time; same-recipe
challengers with another seed are not passed far more often than the 5% aimed at, because
the seed-to-seed spread of the small demo models exceeds the 0.1 margin.

A forced promotion is not a gate outcome: it lives in the promotion request, is explicit,
needs a reason and is recorded on the model version.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from evaluation.stats import (
    PairedTest,
    PairedTestConfig,
    Verdict,
    accuracy_loss,
    log_perplexity_loss,
)

if TYPE_CHECKING:  # the gate is pure arithmetic; importing it must not load torch
    from evaluation.metrics import ModelMetrics

Basis = Literal["task_suites", "perplexity"]
InconclusivePolicy = Literal["keep_champion", "require_force"]
POLICIES = ("keep_champion", "require_force")


@dataclass(frozen=True)
class GateConfig:
    min_exact_match: float = 0.03  # accuracy floor on the task suites (when there are any)
    max_perplexity: float | None = None  # ceiling; None: half the vocabulary size
    exact_match_tolerance: float = 0.1  # non-inferiority margin, accuracy points
    perplexity_tolerance: float = 0.05  # non-inferiority margin, relative perplexity increase
    confidence: float = 0.95  # one-sided, for each bound
    min_examples: int = 20  # fewer paired examples: inconclusive
    inconclusive_policy: InconclusivePolicy = "keep_champion"
    resamples: int = 2000

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_exact_match <= 1.0:
            raise ValueError(f"min_exact_match must be within 0..1, got {self.min_exact_match}")
        if self.max_perplexity is not None and not self.max_perplexity > 1.0:
            raise ValueError(f"max_perplexity must be > 1, got {self.max_perplexity}")
        if self.exact_match_tolerance < 0 or self.perplexity_tolerance < 0:
            raise ValueError(
                "tolerances must be >= 0, got exact_match_tolerance="
                f"{self.exact_match_tolerance}, perplexity_tolerance={self.perplexity_tolerance}"
            )
        if self.inconclusive_policy not in POLICIES:
            raise ValueError(
                f"inconclusive_policy must be one of {POLICIES}, got {self.inconclusive_policy!r}"
            )
        PairedTestConfig(
            self.exact_match_tolerance, self.confidence, self.min_examples, self.resamples
        )

    def test_config(self, margin: float) -> PairedTestConfig:
        return PairedTestConfig(margin, self.confidence, self.min_examples, self.resamples)

    def ceiling(self, vocab_size: int) -> float:
        return self.max_perplexity if self.max_perplexity is not None else vocab_size / 2


@dataclass(frozen=True)
class GateDecision:
    verdict: Verdict
    basis: Basis
    reasons: tuple[str, ...]  # one line per rule, failed or passed, in a fixed order
    config: GateConfig = field(default_factory=GateConfig)
    comparison: PairedTest | None = None  # the deciding test against the champion
    perplexity_test: PairedTest | None = None  # always computed when there is a champion

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(r for r in self.reasons if r.startswith(("FAIL", "INCONCLUSIVE")))

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "basis": self.basis,
            "reasons": list(self.reasons),
            "config": asdict(self.config),
            "comparison": self.comparison.as_dict() if self.comparison else None,
            "perplexity_test": self.perplexity_test.as_dict() if self.perplexity_test else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> GateDecision:
        def test(raw: dict | None) -> PairedTest | None:
            return PairedTest(**raw) if raw else None

        return cls(
            verdict=data["verdict"],
            basis=data["basis"],
            reasons=tuple(data["reasons"]),
            config=GateConfig(**data["config"]),
            comparison=test(data.get("comparison")),
            perplexity_test=test(data.get("perplexity_test")),
        )

    def evidence(self) -> str:
        """One line naming the verdict and its evidence, for failures and tags."""
        test = self.comparison
        if test is None:
            failed = "; ".join(self.failures) or "every floor met"
            return f"gate {self.verdict} on {self.basis} (no champion): {failed}"
        return f"gate {self.verdict} on {self.basis}: {test.sentence()}"


def _rule(ok: bool, text: str) -> str:
    return f"{'ok' if ok else 'FAIL'}: {text}"


def _perplexity_test(challenger: ModelMetrics, champion: ModelMetrics, cfg: GateConfig):
    """Per-text NLL differences over the champion's token counts: with one tokenizer (a warm
    start) exactly the log-perplexity difference; with two (a challenger trained from
    scratch) still fair, since each text's summed NLL is the log-likelihood of the same string."""
    if len(challenger.text_nll) != len(champion.text_nll):
        raise ValueError(
            "challenger and champion were not scored on the same held-out texts "
            f"({len(challenger.text_nll)} vs {len(champion.text_nll)}); score both in one run"
        )
    return log_perplexity_loss(
        challenger.text_nll,
        champion.text_nll,
        champion.text_tokens,
        cfg.test_config(math.log1p(cfg.perplexity_tolerance)),
    )


def decide(
    challenger: ModelMetrics, champion: ModelMetrics | None, config: GateConfig | None = None
) -> GateDecision:
    """Apply the gate to a challenger's metrics, and the champion's when there is one."""
    cfg = config or GateConfig()
    basis: Basis = "task_suites" if challenger.exact_match is not None else "perplexity"
    ppl, ceiling = challenger.perplexity, cfg.ceiling(challenger.vocab_size)
    reasons = [
        _rule(
            math.isfinite(ppl) and ppl <= ceiling,
            f"perplexity {ppl:.4f} <= ceiling {ceiling:.4f}",
        )
    ]
    if basis == "task_suites":
        reasons.append(
            _rule(
                challenger.exact_match >= cfg.min_exact_match,
                f"exact_match {challenger.exact_match:.4f} >= floor {cfg.min_exact_match:.4f}",
            )
        )
    else:
        reasons.append("ok: no task suite; the gate decides on held-out perplexity")
    floors_ok = not any(r.startswith("FAIL") for r in reasons)
    if champion is None:
        reasons.append("ok: no champion to compare with")
        return GateDecision("passed" if floors_ok else "failed", basis, tuple(reasons), cfg)
    ppl_test = _perplexity_test(challenger, champion, cfg)
    if basis == "task_suites":
        if len(challenger.task_correct) != len(champion.task_correct):
            raise ValueError("challenger and champion were not scored on the same suite examples")
        test = accuracy_loss(
            challenger.task_correct,
            champion.task_correct,
            cfg.test_config(cfg.exact_match_tolerance),
            "exact_match",
        )
    else:
        test = ppl_test
    label = {"passed": "ok", "failed": "FAIL", "inconclusive": "INCONCLUSIVE"}[test.verdict]
    reasons.append(f"{label}: vs champion, {test.sentence()}")
    if basis == "task_suites":
        reasons.append(f"info: vs champion, {ppl_test.sentence()} (reported, not deciding)")
    verdict: Verdict = test.verdict if floors_ok else "failed"
    return GateDecision(verdict, basis, tuple(reasons), cfg, test, ppl_test)
