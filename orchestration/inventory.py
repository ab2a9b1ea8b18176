"""The dependency inventory: every external thing the system touches at run time, and who needs it.

Pure logic, no Dagster: the `dependency_inventory` asset (orchestration/defs/partners)
feeds it facts it reads from the code location and the environment, and tests feed it
hand-made graphs.

* A :class:`Dependency` is one external thing (a partner API, MLflow, the Dagster instance
  storage, the lake, the gateway, an engine, an installed Python package) with its tier
  (`sovereign` / `partner` / `transactional`), where it is (a URL or path, never a
  secret) and its fallback.
* An :class:`AssetUse` says which dependencies one asset needs; the Dagster side derives it
  from the asset's resource keys and kinds through :data:`RESOURCE_NEEDS` and
  :data:`KIND_NEEDS`, so a new asset is inventoried by being wired, not by being listed.
* Routes need what serves them: `sovereign-lm` the gateway, the engine and the serving
  path's packages; a fallback route each partner in its order plus what `sovereign-lm`
  needs (every fallback route ends in a local route).
* A dependency is on the critical path when a critical-path asset (one upstream of the
  served model in the main job) or the `sovereign-lm` route needs it. A partner-tier
  dependency there is a violation: :func:`violations` names each asset and partner.

:func:`imported_distributions` finds the packages a code path imports by reading its
source (`import` statements, function-level ones included, following first-party
imports), so packages loaded lazily are not missed and nothing is imported to find out.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Tier = Literal["sovereign", "partner", "transactional"]
SOVEREIGN_ROUTE = "sovereign-lm"

#: Dependency names a resource key brings to every asset that requires it. `@partners`
#: expands to every partner-tier dependency, `@serving-packages` / `@training-packages`
#: to the packages of that code path.
RESOURCE_NEEDS: dict[str, tuple[str, ...]] = {
    "mlops": ("lake",),
    "mlflow_registry": ("mlflow",),
    "trainer": ("mlflow", "@training-packages"),
    "serving_stack": ("gateway", "engines", "@serving-packages"),
    "partners": ("@partners",),
}
#: Dependency names an asset kind brings (an asset that loads a model in-process).
KIND_NEEDS: dict[str, tuple[str, ...]] = {"pytorch": ("@training-packages",)}
#: What every asset run needs: the Dagster instance stores its runs and events.
ALWAYS_NEEDED: tuple[str, ...] = ("dagster-storage",)
#: What the local route needs.
ROUTE_NEEDS: tuple[str, ...] = ("gateway", "engines", "@serving-packages")


@dataclass(frozen=True)
class Dependency:
    name: str
    kind: str
    tier: Tier
    location: str
    fallback: str
    code_paths: tuple[str, ...] = ()  # for a package: the code paths that import it


@dataclass(frozen=True)
class AssetUse:
    asset: str
    needs: frozenset[str]  # dependency names, "@..." groups allowed
    reasons: tuple[str, ...] = ()  # how each need was found, e.g. "resource partners"


@dataclass(frozen=True)
class Row:
    dependency: Dependency
    assets: tuple[str, ...]
    routes: tuple[str, ...]
    critical: bool


def expand(needs: Iterable[str], dependencies: Iterable[Dependency]) -> set[str]:
    """Resolve `@group` names to the dependency names they stand for."""
    deps = list(dependencies)
    groups = {
        "@partners": {d.name for d in deps if d.tier == "partner"},
        "@serving-packages": {d.name for d in deps if "serving" in d.code_paths},
        "@training-packages": {d.name for d in deps if "training" in d.code_paths},
    }
    names = {d.name for d in deps}
    out: set[str] = set()
    for need in needs:
        out |= groups.get(need, {need} & names)
    return out


def route_needs(
    fallback_routes: Mapping[str, list[str]], dependencies: Iterable[Dependency]
) -> dict[str, set[str]]:
    """Dependency names each route needs: the local route, and every fallback route."""
    deps = list(dependencies)
    local = expand(ROUTE_NEEDS, deps)
    out = {SOVEREIGN_ROUTE: set(local)}
    for route, order in fallback_routes.items():
        out[route] = local | expand((f"partner:{e}" for e in order), deps)
    return out


def rows(
    dependencies: Iterable[Dependency],
    uses: Iterable[AssetUse],
    routes: Mapping[str, set[str]],
    critical_assets: set[str],
) -> list[Row]:
    deps = sorted(dependencies, key=lambda d: (d.tier, d.kind, d.name))
    needed_by = {u.asset: expand(u.needs, deps) for u in uses}
    out = []
    for dep in deps:
        assets = tuple(sorted(a for a, names in needed_by.items() if dep.name in names))
        route_names = tuple(sorted(r for r, names in routes.items() if dep.name in names))
        critical = bool(set(assets) & critical_assets) or SOVEREIGN_ROUTE in route_names
        out.append(Row(dep, assets, route_names, critical))
    return out


def violations(
    dependencies: Iterable[Dependency], uses: Iterable[AssetUse], critical_assets: set[str]
) -> list[str]:
    """One line per (critical-path asset, partner-tier dependency) it needs."""
    deps = list(dependencies)
    partners = {d.name for d in deps if d.tier == "partner"}
    found = []
    for use in sorted(uses, key=lambda u: u.asset):
        if use.asset not in critical_assets:
            continue
        for name in sorted(expand(use.needs, deps) & partners):
            how = "; ".join(use.reasons) or "declared"
            found.append(
                f"critical-path asset {use.asset!r} depends on partner {name.split(':', 1)[1]!r} "
                f"({how}); partners must never be on the critical path: move that use to an "
                "asset nothing on the promotion path depends on"
            )
    return found


def critical_path(parents: Mapping[str, Iterable[str]], served: str, in_job: set[str]) -> set[str]:
    """`served` and every asset upstream of it, within the main job's selection."""
    seen, todo = set(), [served]
    while todo:
        asset = todo.pop()
        if asset in seen or asset not in in_job:
            continue
        seen.add(asset)
        todo.extend(parents.get(asset, ()))
    return seen


def markdown(table: list[Row]) -> str:
    lines = [
        "| dependency | tier | kind | location / version | assets | routes | critical | fallback |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        d = r.dependency
        cells = [
            d.name,
            d.tier,
            d.kind,
            d.location,
            ", ".join(r.assets) or "-",
            ", ".join(r.routes) or "-",
            "yes" if r.critical else "no",
            d.fallback,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _module_file(repo: Path, module: str) -> Path | None:
    base = repo.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, repo: Path) -> Iterable[str]:
    """Absolute module names `path` imports (relative imports resolved)."""
    package = path.parent.relative_to(repo).parts
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def imported_modules(repo: Path, roots: Iterable[str]) -> set[str]:
    """Top-level third-party module names imported by the first-party packages `roots`
    and by every first-party module they import, transitively."""
    first_party = {p.parent.name for p in repo.glob("*/__init__.py")}
    todo = [f for root in roots for f in sorted((repo / root).rglob("*.py"))]
    seen: set[Path] = set()
    third_party: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path, repo):
            top = module.split(".", 1)[0]
            if top in first_party:
                found = _module_file(repo, module)
                if found is not None:
                    todo.append(found)
            elif top and top not in sys.stdlib_module_names:
                third_party.add(top)
    return third_party


def imported_distributions(repo: Path, roots: Iterable[str]) -> dict[str, str | None]:
    """Distribution name -> installed version (`None` when not installed: an optional
    extra such as vLLM or DeepSpeed) for the modules :func:`imported_modules` finds."""
    owners = importlib.metadata.packages_distributions()
    out: dict[str, str | None] = {}
    for module in sorted(imported_modules(repo, roots)):
        dists = owners.get(module) or [module]
        dist = next((d for d in dists if d.lower() == module.lower()), dists[0])
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def package_dependencies(paths: Mapping[str, Mapping[str, str | None]]) -> list[Dependency]:
    """One dependency per distribution, from `{code path: {distribution: version}}`."""
    users: dict[str, list[str]] = {}
    versions: dict[str, str | None] = {}
    for path_name, found in sorted(paths.items()):
        for dist, version in found.items():
            users.setdefault(dist, []).append(path_name)
            versions[dist] = version
    return [
        Dependency(
            name=f"package:{dist}",
            kind="python package",
            tier="sovereign",
            location=versions[dist] or "not installed (optional extra)",
            fallback="installed and pinned in the environment; nothing is fetched at run time",
            code_paths=tuple(users[dist]),
        )
        for dist in sorted(users)
    ]
