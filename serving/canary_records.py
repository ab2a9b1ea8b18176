"""The canary rollout's typed config and the records it returns.

:class:`CanaryConfig` (steps, windows, thresholds; checked once at construction),
:class:`StepRecord` per traffic step, :class:`CanaryResult` for the whole rollout and
:class:`HealthVerdict` from a breach check. They sit apart from the controller
(``canary.py``) and the step runner (``canary_steps.py``) so both use them without
importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from serving.stack import ROUTE


@dataclass(frozen=True)
class CanaryConfig:
    steps: tuple[float, ...] = (10.0, 25.0, 50.0, 100.0)
    window_s: float = 60.0
    poll_s: float = 0.5
    max_error_rate: float = 0.05
    max_p95_ratio: float = 2.0
    p95_slack_s: float = 0.1
    min_probe_accuracy: float = 0.8
    max_accuracy_drop: float = 0.0  # canary accuracy may trail stable's by at most this
    breach_min_errors: int = 3  # fewer canary errors than this never triggers a fast rollback
    probe_max_tokens: int = 16
    max_engine_waiting: int = 256  # canary's own queue (vllm:num_requests_waiting) limit
    request_timeout_s: float = 30.0
    route: str = ROUTE
    min_requests: int = 20  # canary requests (user + probe) a traffic step needs to pass
    max_hold_s: float = 0.0  # with no probes: how much longer a step may wait for users
    max_nll_increase: float = 0.1  # nats/token the canary may trail stable on held-out text
    likelihood_confidence: float = 0.95  # one-sided, for the paired likelihood comparison
    min_text_probes: int = 5  # fewer scored texts than this cannot decide on likelihood

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < w <= 100 for w in self.steps):
            raise ValueError(f"steps must be weights in (0, 100], got {self.steps}")
        if list(self.steps) != sorted(self.steps) or self.steps[-1] != 100:
            raise ValueError(f"steps must increase and end at 100, got {self.steps}")
        if self.window_s <= 0 or self.poll_s <= 0:
            raise ValueError(f"window_s and poll_s must be > 0, got {self.window_s}, {self.poll_s}")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if self.min_requests < 1:
            raise ValueError(
                f"min_requests must be >= 1 (a step never passes on zero evidence), got "
                f"{self.min_requests}"
            )
        if self.max_hold_s < 0 or not 0.5 < self.likelihood_confidence < 1:
            raise ValueError(
                f"max_hold_s must be >= 0 and likelihood_confidence in (0.5, 1), got "
                f"{self.max_hold_s}, {self.likelihood_confidence}"
            )


@dataclass
class StepRecord:
    weight: float
    started_at: float
    ended_at: float = 0.0
    canary: dict = field(default_factory=dict)
    stable: dict = field(default_factory=dict)
    probe_accuracy: float | None = None
    stable_probe_accuracy: float | None = None
    evidence: dict = field(default_factory=dict)  # Evidence.to_dict(): requests by source
    likelihood: dict = field(default_factory=dict)  # LikelihoodComparison.to_dict()
    verdict: str = ""  # "pass" | "fail" | "inconclusive" | "skipped" (no probes at 0%)
    passed: bool = False
    reason: str | None = None


@dataclass
class CanaryResult:
    decision: str  # "promoted" | "rolled_back" | "inconclusive"
    reason: str | None
    canary_backend: str
    stable_backend: str
    timeline: list[StepRecord]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HealthVerdict:
    healthy: bool
    reason: str | None = None
