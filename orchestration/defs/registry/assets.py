"""Assets of the registry domain: `evaluation` -> `registered_model` -> `champion`.

* `evaluation` scores the newest `trained_model` (path and data version from that
  asset's latest materialization metadata) and the current champion on the same held-out
  examples, applies the gate, and writes the report under `$MLOPS_HOME/evaluation/<run>`.
* `registered_model` registers the evaluated artifact as a version of `sovereign-lm`
  with lineage and gate tags, logs the metrics to MLflow, and points `challenger` at it
  when it passed. The blocking `gate` check (checks.py) stops `champion` otherwise.
* `champion` promotes the challenger (or, with an explicit forced-promotion config, a
  named version) under the registry lock. The main job moves the alias at the end of its
  canary rollout instead, and `rollback` moves it back: both record that move as a
  materialization of `champion` (`report_champion`), so its latest materialization always
  names the version MLflow's alias points at.

All three are safe to re-run: evaluation is deterministic, registration finds an already
registered artifact by its digest, and promoting the current champion is a no-op.
"""

import contextlib
from pathlib import Path
from typing import Literal

import dagster as dg

from evaluation.gate import GateConfig
from orchestration.resources import MlopsHome
from orchestration.tracing import traced_step
from registry import (
    CHALLENGER,
    CHAMPION,
    AliasChange,
    ForcedPromotion,
    RegistryError,
    download_model_dir,
    lineage_of,
    promote,
    register_version,
)
from registry.history import markdown as history_markdown
from registry.promotion import alias_history

from .resources import MlflowResource

TRAINED_MODEL = dg.AssetKey("trained_model")
CHAMPION_KEY = dg.AssetKey("champion")
EVAL_SUITES = dg.AssetKey("eval_suites")


OWNERS = ["team:ml-platform"]


def latest_metadata(
    context: dg.AssetExecutionContext, key: dg.AssetKey, required: bool = True
) -> tuple[dict, str]:
    """(metadata values, run id) of the latest materialization of `key`."""
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        if not required:
            return {}, ""
        raise dg.Failure(
            f"{key.to_user_string()} has never been materialized; materialize it first"
        )
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    return metadata, event.run_id


def registry_failure(exc: Exception) -> dg.Failure:
    """The one place registry and evaluation errors become Dagster failures."""
    return dg.Failure(description=str(exc), metadata={"error": type(exc).__name__})


class EvaluationRunConfig(dg.Config):
    max_examples: int = 200
    """Held-out texts scored per model (perplexity)."""
    max_suite_examples: int = 1000
    """Examples per task suite scored per model (ordered by example id, then cut)."""
    max_new_tokens: int = 16
    min_exact_match: float = GateConfig.min_exact_match
    """Accuracy floor on the task suites (only when there are suites)."""
    max_perplexity: float | None = None
    """Perplexity ceiling; empty: half the vocabulary size (what uniform guessing scores x 0.5)."""
    exact_match_tolerance: float = GateConfig.exact_match_tolerance
    """Non-inferiority margin against the champion, accuracy points (basis: task suites)."""
    perplexity_tolerance: float = GateConfig.perplexity_tolerance
    """Non-inferiority margin against the champion, relative perplexity (basis: perplexity)."""
    confidence: float = GateConfig.confidence
    """One-sided confidence of each bound of the paired test."""
    min_examples: int = GateConfig.min_examples
    """Fewer paired examples than this: the verdict is inconclusive."""
    inconclusive_policy: Literal["keep_champion", "require_force"] = "keep_champion"
    """Inconclusive verdict: keep the champion (run succeeds, nothing rolls out), or fail the
    run until an operator promotes the version with `promote` and a `force_reason`."""

    def to_domain(self):
        from evaluation.metrics import MetricsConfig
        from evaluation.report import EvaluationConfig

        return EvaluationConfig(
            max_examples=self.max_examples,
            max_suite_examples=self.max_suite_examples,
            metrics=MetricsConfig(max_new_tokens=self.max_new_tokens),
            gate=GateConfig(
                min_exact_match=self.min_exact_match,
                max_perplexity=self.max_perplexity,
                exact_match_tolerance=self.exact_match_tolerance,
                perplexity_tolerance=self.perplexity_tolerance,
                confidence=self.confidence,
                min_examples=self.min_examples,
                inconclusive_policy=self.inconclusive_policy,
            ),
        )


@dg.asset(
    group_name="registry", deps=[TRAINED_MODEL, EVAL_SUITES], kinds={"pytorch"}, owners=OWNERS
)
def evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationRunConfig,
    mlops: MlopsHome,
    mlflow_registry: MlflowResource,
) -> dg.MaterializeResult:
    """The challenger's held-out metrics next to the champion's, and the gate's verdict."""
    trained, training_run = latest_metadata(context, TRAINED_MODEL)
    if "model_path" not in trained:
        raise dg.Failure("trained_model materialization lacks the model_path metadata")
    from evaluation.report import evaluate  # torch loads only when a model is scored
    from evaluation.suites import load_suites
    from observability.hf import disable_progress_bars

    disable_progress_bars()  # tqdm frames of loading weights would clutter the run's log

    workdir = mlops.path("evaluation", context.run_id)
    try:
        domain = config.to_domain()
        # the suite versions eval_suites reported (pinned), so a suite file landing during
        # the run does not change what this evaluation scores
        suites_meta, _ = latest_metadata(context, EVAL_SUITES, required=False)
        pinned = {
            k: v for k, v in (suites_meta.get("suite_versions") or {}).items() if v is not None
        }
        suites = load_suites(mlops.lake() / "evals", domain.max_suite_examples, pinned)
        client = mlflow_registry.client()
        champion = client.aliases().get(CHAMPION)
        champion_dir = (
            download_model_dir(client, champion, workdir / "champion") if champion else None
        )
        report = evaluate(
            trained["model_path"],
            trained.get("data_path") or mlops.lake() / "corpus",
            trained.get("data_version"),
            domain,
            champion_dir=champion_dir,
            champion_version=champion,
            suites=suites,
        )
    except (RegistryError, ValueError) as exc:
        raise registry_failure(exc) from exc
    path = report.write(workdir / "report.json")
    context.log.info(report.markdown())
    return dg.MaterializeResult(
        metadata={
            "report_path": str(path),
            "model_path": str(trained["model_path"]),
            "training_run_id": training_run,
            "data_version": report.data_version,
            "champion_version": champion or "none",
            **evaluation_metadata(report),
            "comparison": dg.MetadataValue.md(report.markdown()),
        }
    )


def evaluation_metadata(report) -> dict:
    """The verdict, its evidence, the suites used and both models' figures, as metadata."""
    decision, test = report.decision, report.decision.comparison
    meta = {
        "gate_passed": decision.passed,
        "gate_verdict": decision.verdict,
        "gate_basis": decision.basis,
        "gate_evidence": decision.evidence(),
        "suites": ", ".join(report.suites) or "none",
        "examples": report.examples,
        "perplexity": report.challenger.perplexity,
    }
    if report.challenger.exact_match is not None:
        meta["exact_match"] = report.challenger.exact_match
    if test is not None:
        meta.update(
            {
                "gate_effect": test.loss,
                "gate_ci_low": test.low,
                "gate_ci_high": test.high,
                "gate_margin": test.margin,
                "gate_n": test.n,
            }
        )
    # the champion's figures as numbers too, so the UI plots both models run over run
    if report.champion is not None:
        meta["champion_perplexity"] = report.champion.perplexity
        if report.champion.exact_match is not None:
            meta["champion_exact_match"] = report.champion.exact_match
    return meta


@dg.asset(group_name="registry", deps=[evaluation], kinds={"mlflow"}, owners=OWNERS)
@traced_step
def registered_model(
    context: dg.AssetExecutionContext, mlflow_registry: MlflowResource
) -> dg.MaterializeResult:
    """The evaluated model as a version of `sovereign-lm`; `challenger` if it passed."""
    from evaluation.report import EvaluationReport

    evaluated, _ = latest_metadata(context, evaluation.key)
    report = EvaluationReport.from_json(Path(evaluated["report_path"]).read_text())
    model_dir = Path(evaluated["model_path"])
    try:
        client = mlflow_registry.client()
        trained, _ = latest_metadata(context, TRAINED_MODEL, required=False)
        if str(trained.get("model_path")) != str(model_dir):  # trained by another run
            trained = {}
        lineage = lineage_of(
            model_dir,
            evaluated.get("training_run_id", ""),
            report.data_path,
            report.data_version,
            init=str(trained.get("init", "")),
            parent_version=str(trained.get("parent_version", "")),
        )
        registered = register_version(
            client, model_dir, report, lineage, actor=f"dagster:{context.run_id}"
        )
        experiment = client.mlflow.get_run(registered.run_id).info.experiment_id
    except RegistryError as exc:
        raise registry_failure(exc) from exc
    return dg.MaterializeResult(
        metadata={
            "model_version": registered.version,
            "gate_passed": registered.gate_passed,
            "newly_registered": registered.created,
            "mlflow_run": dg.MetadataValue.url(
                mlflow_registry.run_url(experiment, registered.run_id)
            ),
            "model_version_url": dg.MetadataValue.url(
                mlflow_registry.version_url(registered.version)
            ),
            "comparison": dg.MetadataValue.md(report.markdown()),
            **{k: dg.MetadataValue.text(v) for k, v in lineage.tags().items()},
        }
    )


def history_table(client) -> dg.MetadataValue:
    """The newest alias moves, as the champion's materializations and observations show them."""
    return dg.MetadataValue.md(history_markdown(alias_history(client).entries()))


class PromotionConfig(dg.Config):
    version: str = ""
    """Version to promote; empty: the current `challenger`."""
    force_reason: str = ""
    """Non-empty: promote even if the gate failed, recording this reason on the version."""


def champion_metadata(
    change: AliasChange, kind: str, reason: str, client, mlflow_registry: MlflowResource
) -> dict:
    """What every move of the alias records on `champion`, whichever step made it."""
    meta = {
        "champion": change.champion or "none",
        "previous_champion": change.previous_champion or "none",
        "changed": change.changed,
        "kind": kind,
        "reason": reason,
        "message": change.message,
        "model_version_url": dg.MetadataValue.url(mlflow_registry.version_url(change.champion)),
    }
    # the move itself is done and recorded in MLflow; only this view of it may be missing
    with contextlib.suppress(RegistryError):
        meta["alias_history"] = history_table(client)
    return meta


def report_champion(
    context: dg.OpExecutionContext | dg.AssetExecutionContext, metadata: dict
) -> None:
    """Record an alias move made outside the `champion` asset (the rollout's promotion, a
    rollback) as a materialization of `champion`, so Dagster shows what MLflow serves."""
    context.log_event(dg.AssetMaterialization(asset_key=CHAMPION_KEY, metadata=metadata))


def promote_to_champion(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    config: PromotionConfig,
    mlflow_registry: MlflowResource,
) -> dict:
    try:
        client = mlflow_registry.client()
        version = config.version or client.aliases().get(CHALLENGER)
        if not version:
            raise dg.Failure("no challenger to promote: register a model that passes the gate")
        force = ForcedPromotion(config.force_reason) if config.force_reason else None
        change = promote(client, version, f"dagster:{context.run_id}", force=force)
        reason = config.force_reason or "operator promotion of the gated challenger"
        meta = champion_metadata(change, "promotion", reason, client, mlflow_registry)
    except (RegistryError, ValueError) as exc:
        raise registry_failure(exc) from exc
    context.log.info(change.message)
    return {**meta, "forced": force is not None}


@dg.asset(group_name="registry", deps=[registered_model], kinds={"mlflow"}, owners=OWNERS)
@traced_step
def champion(
    context: dg.AssetExecutionContext, config: PromotionConfig, mlflow_registry: MlflowResource
) -> dg.MaterializeResult:
    """The serving model: `champion` alias moved to the challenger (gated, idempotent)."""
    return dg.MaterializeResult(metadata=promote_to_champion(context, config, mlflow_registry))
