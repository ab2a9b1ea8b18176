"""The `deployment` asset: canary rollout of the registry's `challenger`, and the `deploy` job.

One materialization decides what serves `sovereign-lm` and makes the registry agree. The
decision is serving's (:func:`serving.rollout_plan.plan_rollout`, from the registry's
aliases); this asset reads the registry, carries the plan out and records it:

* no champion yet: the gated challenger is served as the stable backend and promoted
  directly (there is no stable model to compare a canary with);
* the challenger already is champion (or there is none): no-op, beyond making sure the
  champion is what the gateway serves;
* the challenger was rolled back before: no-op; it needs a new registration or a forced
  promotion, never a silent second attempt;
* otherwise `serving.canary.CanaryController` shifts traffic step by step, with held-out
  probes as the quality signal (likelihood of held-out texts on any corpus, exact match on
  held-out tasks where the corpus has them); each step needs `min_requests` canary
  requests, topped up with those probes when users are too few. The registry promotion is
  its last step, so the champion alias moves only after the rollout has passed. Each move
  of the alias here (this case and the first deployment) is also a materialization of
  `champion`, so Dagster shows the version MLflow serves. A rollback
  is a correct outcome, not a failure: the asset materializes with decision
  `rolled_back` and the reason, and its `canary_passed` check (WARN) fails, so it
  shows without failing the job. Decision `inconclusive` (too little evidence) also
  leaves the champion serving, but tags nothing: the challenger may be rolled out again.

Safe to re-run: each case is re-derived from the registry aliases and the gateway's state;
an interrupted rollout is rolled back before the asset fails, so traffic is never left on a
half-rolled-out canary.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import dagster as dg
import httpx

from evaluation.gate import GateConfig
from orchestration.defs.registry.assets import champion_metadata, history_table, report_champion
from orchestration.defs.registry.resources import MlflowResource
from orchestration.jobs import ROLLOUT_TAGS
from orchestration.resources import MlopsHome
from registry import CHALLENGER, CHAMPION, RegistryClient, RegistryError, RollbackTags, promote
from registry.versions import ModelIntegrityError, fetch_model_dir
from serving.canary import (
    CanaryConfig,
    CanaryController,
    CanaryError,
    CanaryResult,
    probe_accuracy,
    rollback,
)
from serving.canary_evidence import ProbeSet
from serving.engine.launcher import EngineUnavailable
from serving.gateway.client import AdminError
from serving.rollout_plan import NothingToServe, RolloutAction, RolloutRequest, plan_rollout
from serving.stack import ROUTE, StackError, engine_name

from .resources import ServingStack
from .rollout import (
    ProbeDataError,
    RolloutRecord,
    load_probes,
    now,
    record_rollback,
    timeline_markdown,
)

OWNERS = ["team:ml-platform"]
_EXPECTED = (
    RegistryError,
    StackError,
    AdminError,
    EngineUnavailable,
    ModelIntegrityError,
    ProbeDataError,
    ValueError,
    httpx.HTTPError,
)


class DeploymentConfig(dg.Config):
    steps: list[float] = [10.0, 50.0, 100.0]
    """Canary traffic weights in percent, increasing, ending at 100."""
    window_s: float = 5.0
    """How long each weight holds before its analysis (short for the demo; minutes in production)."""
    probe_count: int = 20
    """Held-out texts (and tasks among them) asked of canary and stable at every step; 0
    disables the quality check, and steps then need user traffic as their evidence."""
    probe_text_chars: int = 200
    """Held-out texts are cut to this many characters, so they fit the model's context."""
    min_requests: int = 20
    """Canary requests (users' and probes') each traffic step needs before it may pass."""
    max_hold_s: float = 30.0
    """With no probes: how much longer a step may wait for user traffic, else inconclusive."""
    max_nll_increase: float = 0.1
    """How far (nats per token) the canary's likelihood of held-out texts may trail stable's."""
    min_probe_accuracy: float = GateConfig.min_exact_match
    """Exact-match floor of the canary on the probes (the evaluation gate's floor by default)."""
    max_accuracy_drop: float = 0.1
    """How far the canary's probe accuracy may trail the stable model's (sampling noise)."""
    max_p95_ratio: float = 2.0
    """Canary p95 latency may be at most this multiple of stable's (plus a small slack)."""

    def canary(self, serving: ServingStack) -> CanaryConfig:
        return CanaryConfig(
            steps=tuple(self.steps),
            window_s=self.window_s,
            poll_s=min(0.5, self.window_s / 4),
            max_error_rate=serving.max_error_rate,
            breach_min_errors=serving.breach_min_errors,
            max_p95_ratio=self.max_p95_ratio,
            min_probe_accuracy=self.min_probe_accuracy,
            max_accuracy_drop=self.max_accuracy_drop,
            min_requests=self.min_requests,
            max_hold_s=self.max_hold_s,
            max_nll_increase=self.max_nll_increase,
        )


@dataclass(frozen=True, kw_only=True)
class _Rollout:
    """What every step of one materialization works with."""

    context: dg.AssetExecutionContext
    serving: ServingStack
    client: RegistryClient
    registry: MlflowResource
    home: Path
    config: DeploymentConfig

    @property
    def actor(self) -> str:
        return f"dagster:{self.context.run_id}"

    @property
    def models(self) -> Path:
        return self.home / "serving" / "models"

    def probes(self, challenger: str) -> ProbeSet:
        return load_probes(
            self.client.version_tags(challenger),
            self.home / "lake" / "corpus",
            self.config.probe_count,
            self.config.probe_text_chars,
        )


def _metadata(decision: str, reason: str, challenger: str | None, champion: str | None) -> dict:
    return {
        "decision": decision,
        "reason": reason,
        "challenger_version": challenger or "none",
        "served_version": champion or "none",
    }


@dg.asset(
    group_name="serving",
    deps=[dg.AssetKey("registered_model")],
    kinds={"mlflow"},
    owners=OWNERS,
    check_specs=[
        dg.AssetCheckSpec(
            "canary_passed",
            asset="deployment",
            description="The challenger serves as champion after the rollout (WARN otherwise).",
        )
    ],
)
def deployment(
    context: dg.AssetExecutionContext,
    config: DeploymentConfig,
    mlops: MlopsHome,
    mlflow_registry: MlflowResource,
    serving_stack: ServingStack,
) -> dg.MaterializeResult:
    """The model serving `sovereign-lm` behind the gateway, and how it got there.

    Rolls the registry's challenger out as a canary against the champion (or serves it
    directly when there is no champion yet), promoting it only once every step passed.
    """
    home = mlops.root()
    try:
        client = mlflow_registry.client()
        aliases = client.aliases()
        challenger, champion = aliases.get(CHALLENGER), aliases.get(CHAMPION)
        rolled_back = (
            RollbackTags.from_tags(client.version_tags(challenger)) if challenger else None
        )
        request = RolloutRequest(
            challenger=challenger,
            champion=champion,
            challenger_rolled_back=rolled_back.reason if rolled_back else None,
        )
        try:
            plan = plan_rollout(request)
        except NothingToServe as exc:
            raise dg.Failure(f"{client.config.model_name}: {exc}") from exc
        run = _Rollout(
            context=context,
            serving=serving_stack,
            client=client,
            registry=mlflow_registry,
            home=home,
            config=config,
        )
        if plan.action is RolloutAction.SERVE_CHAMPION:
            admin = serving_stack.serve(home, fetch_model_dir(client, champion, run.models))
            meta = _metadata("noop", plan.reason, challenger, champion)
        elif plan.action is RolloutAction.FIRST_DEPLOYMENT:
            admin, meta = _first_deployment(run, challenger=challenger, reason=plan.reason)
        else:
            admin, meta = _canary(run, challenger=challenger, champion=champion)
    except _EXPECTED as exc:
        raise dg.Failure(description=str(exc), metadata={"error": type(exc).__name__}) from exc

    passed = challenger is None or meta["served_version"] == challenger
    context.log.info(f"deployment: {meta['decision']}: {meta['reason']}")
    try:
        meta["alias_history"] = history_table(client)
    except RegistryError as exc:  # the moves are recorded; only this view of them failed
        context.log.warning(f"alias history unavailable for the metadata: {exc}")
    return dg.MaterializeResult(
        metadata={**meta, "gateway_url": dg.MetadataValue.url(admin.url)},
        check_results=[
            dg.AssetCheckResult(
                check_name="canary_passed",
                passed=passed,
                severity=dg.AssetCheckSeverity.WARN,
                description=meta["reason"],
                metadata={"decision": meta["decision"]},
            )
        ],
    )


def _first_deployment(run: _Rollout, *, challenger: str, reason: str):
    model_dir = fetch_model_dir(run.client, challenger, run.models)
    # a model that cannot be served never gets promoted
    admin = run.serving.serve(run.home, model_dir)
    probes = run.probes(challenger)
    engine_url = admin.state()["backends"][engine_name(model_dir)]["url"]
    accuracy = probe_accuracy(engine_url, probes.tasks, run.config.canary(run.serving))
    change = promote(
        run.client,
        challenger,
        run.actor,
        kind="first-deployment",
        reason=reason,
        evidence={"probes": {"tasks": len(probes.tasks), "exact_match": accuracy}},
    )
    run.context.log.info(change.message)
    report_champion(
        run.context, champion_metadata(change, "first-deployment", reason, run.client, run.registry)
    )
    meta = _metadata("promoted", reason, challenger, change.champion)
    # recorded, not gated: the evaluation gate judged this model, and there is no stable
    # model whose accuracy the served one could be compared with
    meta.update(
        {"probes": len(probes.tasks), "text_probes": len(probes.texts), "probe_accuracy": accuracy}
    )
    return admin, meta


def _canary(run: _Rollout, *, challenger: str, champion: str):
    context, serving, client, home = run.context, run.serving, run.client, run.home
    actor = run.actor
    canary_config = run.config.canary(serving)
    challenger_dir = fetch_model_dir(client, challenger, run.models)
    admin = serving.serve(home, fetch_model_dir(client, champion, run.models))
    probes = run.probes(challenger)
    if run.config.probe_count and not probes.tasks:
        context.log.info(f"no held-out tasks in {probes.source}: probing by text likelihood only")
    fleet, paths = serving.fleet(home), serving.paths(home)
    canary = engine_name(challenger_dir)
    promote_errors: list[Exception] = []
    controller = CanaryController(admin, fleet, canary_config)

    def promote_challenger() -> None:
        steps = controller.current.timeline if controller.current else []
        evidence = {"canary": {"decision": "passed", "steps": [_step_evidence(s) for s in steps]}}
        reason = f"canary passed {len(steps)} steps against v{champion}"
        try:
            change = promote(
                client, challenger, actor, kind="canary-promotion", reason=reason, evidence=evidence
            )
            context.log.info(change.message)
        except Exception as exc:  # the controller rolls back; the asset fails afterwards
            promote_errors.append(exc)
            raise
        # the alias has moved: Dagster must say so even if the rest of the rollout fails
        report_champion(
            context, champion_metadata(change, "canary-promotion", reason, client, run.registry)
        )

    def on_rollback(reason: str) -> None:
        if not promote_errors:  # a registry conflict is no verdict on the model
            record_rollback(client, challenger, reason, actor)

    RolloutRecord(challenger, canary, context.run_id, now()).save(paths)
    try:
        result = controller.run(challenger_dir, probes, promote_challenger, on_rollback)
    except CanaryError as exc:  # another rollout owns the route: leave its canary alone
        raise dg.Failure(str(exc)) from exc
    except Exception as exc:
        result = _interrupted(
            run,
            admin=admin,
            fleet=fleet,
            challenger=challenger,
            champion=champion,
            canary=canary,
            exc=exc,
        )
    finally:
        RolloutRecord.clear(paths)
    if promote_errors:
        raise dg.Failure(
            f"the canary of v{challenger} passed, but its promotion failed "
            f"({promote_errors[0]}); traffic is back on v{champion}. Re-evaluate v{challenger} "
            "against the current champion, then deploy again"
        )
    served = challenger if result.decision == "promoted" else champion
    meta = _metadata(result.decision, result.reason or "every step passed", challenger, served)
    meta.update(
        {
            "champion_before": champion,
            "canary_backend": result.canary_backend,
            "stable_backend": result.stable_backend,
            "probes": len(probes.tasks),
            "text_probes": len(probes.texts),
            "probe_source": probes.source,
            "canary_requests": dg.MetadataValue.json(
                [{"weight": s.weight, **s.evidence} for s in result.timeline]
            ),
            "timeline": dg.MetadataValue.md(timeline_markdown(result)),
            "timeline_data": dg.MetadataValue.json([asdict(s) for s in result.timeline]),
        }
    )
    return admin, meta


def _step_evidence(step) -> dict:
    return {
        "weight": step.weight,
        "verdict": step.verdict,
        "requests": step.evidence.get("requests"),
        "user_requests": step.evidence.get("user_requests"),
        "probe_requests": step.evidence.get("probe_requests"),
        "error_rate": step.evidence.get("error_rate"),
        "probe_accuracy": step.probe_accuracy,
        "likelihood": step.likelihood.get("verdict"),
        "nll_diff": step.likelihood.get("mean_diff"),
    }


def _interrupted(
    run: _Rollout, *, admin, fleet, challenger: str, champion: str, canary: str, exc: Exception
) -> CanaryResult:
    """The rollout raised. If the health sensor rolled the canary back meanwhile, that is the
    outcome; otherwise send traffic back to stable, retire the canary and fail."""
    route = admin.state()["routes"].get(ROUTE) or {}
    recorded = RollbackTags.from_tags(run.client.version_tags(challenger))
    if route.get("canary") is None and recorded is not None and recorded.reason:
        return CanaryResult("rolled_back", recorded.reason, canary, route.get("stable", ""), [])
    rollback(admin, ROUTE, fleet)
    fleet.stop(canary)  # also an engine that never became healthy enough to be routed to
    raise dg.Failure(
        f"the rollout of v{challenger} stopped: {type(exc).__name__}: {exc}; traffic is back on "
        f"v{champion} and the canary is retired. Safe to re-run"
    ) from exc


deploy = dg.define_asset_job(
    "deploy",
    selection=dg.AssetSelection.assets(deployment),
    description=(
        "Canary rollout of the registry's challenger behind the gateway; promotes it to "
        "champion when every step passes, rolls it back otherwise."
    ),
    tags=ROLLOUT_TAGS,
)
