"""One evaluation run: challenger and champion on the same examples, and the verdict.

``evaluate`` loads the held-out sample (and the task suites it is given) once, scores the
challenger and (when given) the champion on them, and applies the gate. The ``EvaluationReport`` it returns is plain data: it round-trips
through JSON (the evaluation asset writes it next to the lake so the registration step reads
exactly what was decided) and renders as a small markdown table for Dagster metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evaluation.gate import GateConfig, GateDecision, decide
from evaluation.heldout import load_heldout
from evaluation.metrics import MetricsConfig, ModelMetrics, evaluate_model
from evaluation.suites import Suite, all_examples


@dataclass(frozen=True)
class EvaluationConfig:
    max_examples: int = 200  # held-out texts scored; bounds evaluation time
    max_suite_examples: int = 1000  # examples per task suite (loaded by the caller)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if self.max_examples < 1 or self.max_suite_examples < 1:
            raise ValueError(
                f"max_examples and max_suite_examples must be >= 1, got {self.max_examples}, "
                f"{self.max_suite_examples}"
            )


@dataclass(frozen=True)
class EvaluationReport:
    challenger_path: str
    challenger: ModelMetrics
    champion_version: str | None  # registry version the challenger was compared with
    champion: ModelMetrics | None
    decision: GateDecision
    data_path: str
    data_version: int
    examples: int  # paired examples the gate's basis was measured on
    suites: tuple[str, ...] = ()  # ``name@version`` of every suite scored

    def to_json(self) -> str:
        data = asdict(self)
        data["decision"] = self.decision.as_dict()
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EvaluationReport:
        data = json.loads(text)
        champion = data["champion"]
        return cls(
            challenger_path=data["challenger_path"],
            challenger=ModelMetrics(**data["challenger"]),
            champion_version=data["champion_version"],
            champion=ModelMetrics(**champion) if champion else None,
            decision=GateDecision.from_dict(data["decision"]),
            data_path=data["data_path"],
            data_version=int(data["data_version"]),
            examples=int(data["examples"]),
            suites=tuple(data.get("suites", ())),
        )

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)  # readers never see a half-written report
        return path

    def metrics(self) -> dict[str, float]:
        """Flat metric names for MLflow: ``eval_<metric>`` and ``champion_<metric>``."""
        out = {f"eval_{k}": float(v) for k, v in self.challenger.as_dict().items()}
        if self.champion is not None:
            out.update({f"champion_{k}": float(v) for k, v in self.champion.as_dict().items()})
        out["gate_passed"] = 1.0 if self.decision.passed else 0.0
        return out

    def markdown(self) -> str:
        champ = self.champion
        name = f"champion (v{self.champion_version})" if champ else "champion"

        def cell(metrics: ModelMetrics | None, key: str) -> str:
            if metrics is None:
                return "none"
            value = metrics.as_dict().get(key)
            return "none" if value is None else f"{value:.4f}"

        keys = ["exact_match"] if self.challenger.exact_match is not None else []
        keys += [f"exact_match.{s}" for s in self.challenger.suite_accuracy] + ["perplexity"]
        rows = [f"| metric | challenger | {name} |", "| --- | ---: | ---: |"]
        rows += [
            f"| {k.replace('_', ' ')} | {cell(self.challenger, k)} | {cell(champ, k)} |"
            for k in keys
        ]
        rows.append(f"| tasks | {self.challenger.tasks} | {champ.tasks if champ else 'none'} |")
        verdict = self.decision.verdict.upper()
        suites = ", ".join(self.suites) or "none"
        lines = [
            f"**Gate {verdict}** on {self.decision.basis.replace('_', ' ')}, "
            f"{self.examples} paired examples (data version {self.data_version}; "
            f"suites: {suites})",
            "",
            *rows,
            "",
        ]
        lines += [f"- {reason}" for reason in self.decision.reasons]
        return "\n".join(lines)


def evaluate(
    challenger_dir: str | Path,
    data_path: str | Path,
    data_version: int | None,
    config: EvaluationConfig | None = None,
    champion_dir: str | Path | None = None,
    champion_version: str | None = None,
    suites: tuple[Suite, ...] = (),
) -> EvaluationReport:
    """Score challenger (and champion) on one held-out sample and the suites; apply the gate."""
    cfg = config or EvaluationConfig()
    if (champion_dir is None) != (champion_version is None):
        raise ValueError(
            "champion_dir and champion_version go together, got "
            f"champion_dir={champion_dir!r}, champion_version={champion_version!r}"
        )
    sample = load_heldout(data_path, data_version, cfg.max_examples)
    tasks = all_examples(suites)
    challenger = evaluate_model(challenger_dir, sample, cfg.metrics, tasks)
    champion = evaluate_model(champion_dir, sample, cfg.metrics, tasks) if champion_dir else None
    decision = decide(challenger, champion, cfg.gate)
    return EvaluationReport(
        challenger_path=str(challenger_dir),
        challenger=challenger,
        champion_version=champion_version,
        champion=champion,
        decision=decision,
        data_path=sample.data_path,
        data_version=sample.data_version,
        examples=len(tasks) if decision.basis == "task_suites" else len(challenger.text_nll),
        suites=tuple(suite.ref() for suite in suites),
    )
