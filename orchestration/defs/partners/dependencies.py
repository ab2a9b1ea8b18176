"""The `dependency_inventory` asset and its blocking check `no_partner_on_critical_path`.

The asset collects the facts and `orchestration.inventory` decides: which external
dependencies exist (partners from the serving config and the running gateway, MLflow, the
Dagster instance storage, the lake, the gateway and engines, the Python packages of the
serving and training paths with their installed versions), which assets need each one
(from the code location's own asset graph: each asset's resource keys and kinds, plus
`mlops/dependencies` asset metadata for a need no resource shows), which routes need it,
and which assets are on the critical path (`deployment` and everything upstream of it in
`train_and_deploy`). The graph is the one the run was loaded with, so a wrong wiring is
caught by whichever code location carries it.

Nothing secret is recorded: URLs lose any user info, partners are shown by base URL and
model, never by key or key variable. Safe to re-run: it only reads.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg

from observability.settings import Settings
from orchestration import inventory
from orchestration.defs.registry.resources import MlflowResource
from orchestration.defs.serving.resources import ServingStack
from orchestration.inventory import AssetUse, Dependency
from orchestration.resources import MlopsHome
from serving.gateway.client import AdminError
from serving.partners.config import ServingConfigError, load_serving_config
from serving.stack import StackError

REPO = Path(__file__).resolve().parents[3]
MAIN_JOB = "train_and_deploy"
SERVED_ASSET = "deployment"
DECLARED_KEY = "mlops/dependencies"
CHECK = "no_partner_on_critical_path"
CODE_PATHS = {"serving": ("serving",), "training": ("training", "evaluation")}


def redact(url: str) -> str:
    """`url` without user name or password."""
    parts = urlsplit(url)
    if not parts.netloc or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _partner(name: str, kind: str, base_url: str, model: str, routes: dict) -> Dependency:
    via = [r for r, order in routes.items() if name in order]
    fallback = (
        "; ".join(f"{r}: next entry of {' -> '.join(routes[r])}" for r in via)
        if via
        else "none needed: only asked by name (a quorum vote; it abstains)"
    )
    return Dependency(
        f"partner:{name}", f"partner API ({kind})", "partner", f"{base_url} ({model})", fallback
    )


def partner_dependencies(
    context: dg.AssetExecutionContext, home: Path, serving: ServingStack
) -> tuple[list[Dependency], dict[str, list[str]]]:
    """Partners of the serving config and of the running gateway, and the fallback routes."""
    partners: dict[str, tuple[str, str, str]] = {}
    routes: dict[str, list[str]] = {}
    path = Settings.from_env().serving_config_path(home)
    if path is not None:
        try:
            config = load_serving_config(path)
        except ServingConfigError as exc:
            raise dg.Failure(f"cannot read the serving config: {exc}") from exc
        partners |= {n: (s.kind, s.base_url, s.model) for n, s in config.partners.items()}
        routes |= config.fallback_routes
    try:
        admin = serving.gateway(home)
        view = admin.partners() if admin is not None else {}
    except (AdminError, StackError) as exc:
        context.log.warning(f"gateway not readable, listing the serving config only: {exc}")
        view = {}
    for name, p in (view.get("partners") or {}).items():
        partners.setdefault(name, (p.get("kind"), p.get("base_url"), p.get("model")))
    for name, r in (view.get("fallback_routes") or {}).items():
        routes.setdefault(name, list(r.get("order") or []))
    deps = [_partner(n, *partners[n], routes) for n in sorted(partners)]
    return deps, routes


def platform_dependencies(
    context: dg.AssetExecutionContext,
    mlops: MlopsHome,
    mlflow: MlflowResource,
    serving: ServingStack,
) -> list[Dependency]:
    home = mlops.root()
    tracking = redact(mlflow.config().tracking_uri)
    mlflow_kind = "PostgreSQL (MLflow store)" if tracking.startswith("postgresql") else "MLflow"
    storage = context.instance.run_storage
    if hasattr(storage, "postgres_url"):
        storage_kind, storage_at = "PostgreSQL (Dagster storage)", redact(storage.postgres_url)
    else:
        storage_kind = f"Dagster storage ({type(storage).__name__})"
        storage_at = os.environ.get("DAGSTER_HOME", "ephemeral")
    stack = serving.paths(home).read_stack()
    gateway = (stack.get("gateway") or {}).get("url") or "not running"
    engines = ", ".join(f"{n} {e.get('url')}" for n, e in sorted(stack.get("engines", {}).items()))
    lake = str(mlops.lake())
    none_at_run_time = "none at run time: a run that needs it fails and is safe to retry"
    return [
        Dependency(
            "mlflow",
            mlflow_kind,
            "sovereign",
            tracking,
            none_at_run_time + "; serving keeps the deployed champion",
        ),
        Dependency(
            "dagster-storage",
            storage_kind,
            "sovereign",
            storage_at,
            "none: runs wait for it; serving is unaffected",
        ),
        Dependency(
            "lake",
            "lake (Delta tables)",
            "sovereign",
            lake,
            none_at_run_time + "; serving is unaffected",
        ),
        Dependency(
            "gateway",
            "OpenAI-compatible gateway",
            "sovereign",
            gateway,
            "the supervisor restarts it; state is restored from its state file",
        ),
        Dependency(
            "engines",
            "inference engines",
            "sovereign",
            engines or "not running",
            "the supervisor restarts a dead engine; a failing canary is rolled back",
        ),
    ]


def asset_uses(repo: dg.RepositoryDefinition) -> list[AssetUse]:
    graph = repo.asset_graph
    uses = []
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        resources = sorted(graph.assets_def_for_key(key).required_resource_keys)
        declared = str(node.metadata.get(DECLARED_KEY, "") or "")
        needs = set(inventory.ALWAYS_NEEDED)
        reasons = []
        for resource in resources:
            if resource in inventory.RESOURCE_NEEDS:
                needs |= set(inventory.RESOURCE_NEEDS[resource])
                reasons.append(f"resource {resource}")
        for kind in sorted(node.kinds):
            needs |= set(inventory.KIND_NEEDS.get(kind, ()))
        if declared:
            needs |= {n.strip() for n in declared.split(",") if n.strip()}
            reasons.append(f"metadata {DECLARED_KEY}")
        uses.append(AssetUse(key.to_user_string(), frozenset(needs), tuple(reasons)))
    return uses


def critical_assets(repo: dg.RepositoryDefinition) -> set[str]:
    if not repo.has_job(MAIN_JOB):
        raise dg.Failure(f"the code location has no job {MAIN_JOB!r}: no critical path to check")
    job = repo.get_job(MAIN_JOB)
    in_job = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    graph = repo.asset_graph
    parents = {
        k.to_user_string(): [p.to_user_string() for p in graph.get(k).parent_keys]
        for k in graph.get_all_asset_keys()
    }
    return inventory.critical_path(parents, SERVED_ASSET, in_job)


@dg.asset(
    group_name="ops",
    owners=["team:ml-platform"],
    kinds={"python"},
    check_specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset="dependency_inventory",
            blocking=True,
            description=(
                "No asset on the critical path (upstream of the served model in "
                "train_and_deploy) depends on a partner-tier dependency (ERROR)."
            ),
        )
    ],
)
def dependency_inventory(
    context: dg.AssetExecutionContext,
    mlops: MlopsHome,
    mlflow_registry: MlflowResource,
    serving_stack: ServingStack,
) -> dg.MaterializeResult:
    """Every external dependency the system touches at run time: its tier, the assets and
    routes that need it, whether it is on the critical path, and its fallback."""
    home = mlops.root()
    repo = context.repository_def
    partners, routes = partner_dependencies(context, home, serving_stack)
    packages = inventory.package_dependencies(
        {path: inventory.imported_distributions(REPO, roots) for path, roots in CODE_PATHS.items()}
    )
    deps = [
        *partners,
        *platform_dependencies(context, mlops, mlflow_registry, serving_stack),
        *packages,
    ]
    uses = asset_uses(repo)
    critical = critical_assets(repo)
    table = inventory.rows(deps, uses, inventory.route_needs(routes, deps), critical)
    problems = inventory.violations(deps, uses, critical)
    for problem in problems:
        context.log.error(problem)
    return dg.MaterializeResult(
        metadata={
            "dependencies": dg.MetadataValue.md(inventory.markdown(table)),
            "dependency_count": len(table),
            "partner_count": len(partners),
            "critical_count": sum(r.critical for r in table),
            "critical_assets": ", ".join(sorted(critical)),
            "packages": dg.MetadataValue.json(
                {p.name.split(":", 1)[1]: p.location for p in packages}
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK,
                passed=not problems,
                severity=dg.AssetCheckSeverity.ERROR,
                description="\n".join(problems)
                or "no partner-tier dependency on the critical path",
                metadata={"violations": len(problems)},
            )
        ],
    )
