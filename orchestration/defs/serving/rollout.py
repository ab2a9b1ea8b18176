"""What the `deployment` asset and the canary health sensor share, free of Dagster.

* :func:`load_probes`: the held-out material of the data version the challenger was
  evaluated on (the same split rule and order as evaluation), falling back to the latest
  corpus: held-out texts, scored by likelihood on any corpus, and the held-out tasks among
  them, scored by exact match.
* :class:`RolloutRecord`: `$MLOPS_HOME/serving/rollout.json` names the registry version a
  live canary serves. The gateway only knows engine names; the sensor reads this file to
  record a rollback on the right version.
* :func:`record_rollback`: the `rollback.*` tags on a version whose canary was rolled back.
  `registry.promote` refuses a version carrying `rollback.reason` without an explicit
  forced promotion, so a failed challenger cannot slip through a later `promote` run.
* :func:`timeline_markdown`: the canary's per-step record as a table for asset metadata.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

from registry import Lineage, RegistryClient, RollbackTags, set_version_tags
from serving.canary import CanaryResult
from serving.canary_evidence import Probe, ProbeSet
from serving.gateway.state import StateStore
from serving.supervisor import StackPaths, read_json


class ProbeDataError(ValueError):
    """No corpus table could provide the held-out probe tasks."""


def load_probes(
    tags: dict[str, str], fallback_corpus: Path, count: int, text_chars: int = 200
) -> ProbeSet:
    """Up to `count` held-out texts (cut to `text_chars` characters, so they fit the
    model's context) and tasks, from the table and version in the version's tags if
    readable, otherwise from `fallback_corpus`."""
    if count < 1:
        return ProbeSet()
    from evaluation.heldout import HeldoutDataError, load_heldout

    sources: list[tuple[str, int | None]] = []
    lineage = Lineage.from_tags(tags)
    if lineage.data_path:
        evaluated_on = tags.get("eval.data_version")
        version = int(evaluated_on) if evaluated_on else lineage.data_version
        sources.append((lineage.data_path, version))
    sources.append((str(fallback_corpus), None))
    problems = []
    for path, data_version in sources:
        try:
            sample = load_heldout(path, data_version, count)
        except HeldoutDataError as exc:
            problems.append(str(exc))
            continue
        return ProbeSet(
            tasks=tuple(Probe(task.prompt, task.answer) for task in sample.tasks),
            texts=tuple(text[:text_chars] for text in sample.texts),
            source=f"held-out split of {sample.data_path} v{sample.data_version}",
        )
    raise ProbeDataError(
        "no held-out probes: " + "; ".join(problems) + " (set probe_count: 0 to roll out "
        "without a quality check; steps then need user traffic as evidence)"
    )


@dataclass(frozen=True)
class RolloutRecord:
    version: str
    canary: str  # the gateway backend (engine) name serving `version`
    run_id: str
    started_at: str

    @staticmethod
    def path(paths: StackPaths) -> Path:
        return paths.root / "rollout.json"

    def save(self, paths: StackPaths) -> None:
        StateStore(self.path(paths)).save(asdict(self))

    @classmethod
    def load(cls, paths: StackPaths) -> RolloutRecord | None:
        data = read_json(cls.path(paths))
        try:
            return cls(**data) if data else None
        except TypeError:  # a record of another layout names no version we can trust
            return None

    @classmethod
    def clear(cls, paths: StackPaths) -> None:
        cls.path(paths).unlink(missing_ok=True)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def record_rollback(client: RegistryClient, version: str, reason: str, actor: str) -> bool:
    """Tag `version` as rolled back; `False` when it already was (the first cause stays:
    later detections of the same failure are echoes of it)."""
    if RollbackTags.from_tags(client.version_tags(version)) is not None:
        return False
    rolled_back = RollbackTags(reason=reason[:4000], by=actor, at=now())
    set_version_tags(client, version, {**rolled_back.tags(), "canary.decision": "rolled_back"})
    return True


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def timeline_markdown(result: CanaryResult) -> str:
    rows = [
        "| canary weight | requests (user + probe) | error rate | p95 canary | p95 stable "
        "| probe accuracy | stable probe accuracy | text NLL canary / stable | result |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for step in result.timeline:
        canary, stable = step.canary or {}, step.stable or {}
        evidence, likelihood = step.evidence or {}, step.likelihood or {}
        requests = (
            f"{evidence['requests']} ({evidence['user_requests']} + {evidence['probe_requests']})"
            if evidence
            else "-"
        )
        nll = (
            f"{likelihood['canary_nll']:.3f} / {likelihood['stable_nll']:.3f}"
            if likelihood
            else "-"
        )
        verdict = step.verdict or ("pass" if step.passed else "fail")
        outcome = verdict if step.passed else f"{verdict.upper()}: {step.reason or ''}"
        rows.append(
            f"| {step.weight:g}% | {requests} | {_fmt(evidence.get('error_rate'), '.1%')} "
            f"| {_fmt(canary.get('p95_s'), '.3f')} | {_fmt(stable.get('p95_s'), '.3f')} "
            f"| {_fmt(step.probe_accuracy, '.0%')} | {_fmt(step.stable_probe_accuracy, '.0%')} "
            f"| {nll} | {outcome.replace('|', '/')} |"
        )
    return "\n".join(rows)
