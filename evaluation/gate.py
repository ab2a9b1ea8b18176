"""The promotion gate: may a challenger replace the champion?

Two kinds of rule, both in ``GateConfig``:

* absolute floors, so a model that learned nothing never ships even when there is no
  champion to compare with (``min_exact_match``, ``max_perplexity``);
* no regression against the champion beyond a tolerance, measured on the same examples
  in the same run (``exact_match_tolerance`` in absolute accuracy points,
  ``perplexity_tolerance`` as a relative increase).

The default floors were measured on the sample corpus (200 held-out tasks, data seed 7):

| model | exact match | perplexity |
| --- | ---: | ---: |
| random init (untrained, or weights replaced by noise) | 0.000 | 400-510 |
| ``torchrun -m training``, tiny preset, 1 process, 300 steps | 0.015 | 5.9 |
| the demo: tiny preset, 2 processes, 300 steps | 0.100 | 5.6 |
| ``evaluation.reference_model``, 300 steps | 0.210 | 5.2 |

A perplexity ceiling of 50 sits an order of magnitude from both groups; an exact-match
floor of 0.03 passes the demo model with a 3x margin, fails anything that learned nothing,
and also refuses the half-trained single-process run, whose answers are right by luck.

A forced promotion is not a gate outcome: it lives in the promotion request, is explicit,
needs a reason and is recorded on the model version.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the gate is pure arithmetic; importing it must not load torch
    from evaluation.metrics import ModelMetrics


@dataclass(frozen=True)
class GateConfig:
    min_exact_match: float = 0.03
    max_perplexity: float = 50.0
    exact_match_tolerance: float = 0.02  # challenger may trail the champion by this much
    perplexity_tolerance: float = 0.05  # ... and have up to 5% higher perplexity

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_exact_match <= 1.0:
            raise ValueError(f"min_exact_match must be within 0..1, got {self.min_exact_match}")
        if not self.max_perplexity > 1.0:
            raise ValueError(f"max_perplexity must be > 1, got {self.max_perplexity}")
        if self.exact_match_tolerance < 0 or self.perplexity_tolerance < 0:
            raise ValueError(
                "tolerances must be >= 0, got exact_match_tolerance="
                f"{self.exact_match_tolerance}, perplexity_tolerance={self.perplexity_tolerance}"
            )


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: tuple[str, ...]  # one line per rule, failed or passed, in a fixed order
    config: GateConfig = field(default_factory=GateConfig)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(r for r in self.reasons if r.startswith("FAIL"))

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons), "config": asdict(self.config)}

    @classmethod
    def from_dict(cls, data: dict) -> GateDecision:
        return cls(
            passed=bool(data["passed"]),
            reasons=tuple(data["reasons"]),
            config=GateConfig(**data["config"]),
        )


def _rule(ok: bool, text: str) -> str:
    return f"{'ok' if ok else 'FAIL'}: {text}"


def decide(
    challenger: ModelMetrics, champion: ModelMetrics | None, config: GateConfig | None = None
) -> GateDecision:
    """Apply the gate to a challenger's metrics, and the champion's when there is one."""
    cfg = config or GateConfig()
    ppl = challenger.perplexity
    reasons = [
        _rule(
            challenger.exact_match >= cfg.min_exact_match,
            f"exact_match {challenger.exact_match:.4f} >= floor {cfg.min_exact_match:.4f}",
        ),
        _rule(
            math.isfinite(ppl) and ppl <= cfg.max_perplexity,
            f"perplexity {ppl:.4f} <= ceiling {cfg.max_perplexity:.4f}",
        ),
    ]
    if champion is None:
        reasons.append("ok: no champion to compare with")
    else:
        em_bar = champion.exact_match - cfg.exact_match_tolerance
        ppl_bar = champion.perplexity * (1.0 + cfg.perplexity_tolerance)
        reasons += [
            _rule(
                challenger.exact_match >= em_bar,
                f"exact_match {challenger.exact_match:.4f} >= champion "
                f"{champion.exact_match:.4f} - tolerance {cfg.exact_match_tolerance:.4f}",
            ),
            _rule(
                math.isfinite(ppl) and ppl <= ppl_bar,
                f"perplexity {ppl:.4f} <= champion {champion.perplexity:.4f} "
                f"x (1 + {cfg.perplexity_tolerance:.4f})",
            ),
        ]
    passed = not any(r.startswith("FAIL") for r in reasons)
    return GateDecision(passed=passed, reasons=tuple(reasons), config=cfg)
