"""Contract: the dependency inventory's logic (orchestration/inventory.py), without Dagster.

The critical path is the served asset and its ancestors inside the main job; a partner
needed by a critical-path asset is a violation naming both; routes need what serves them;
packages are found from the source with their installed versions.
"""

from pathlib import Path

import pytest

from orchestration import inventory
from orchestration.inventory import AssetUse, Dependency

REPO = Path(__file__).resolve().parents[3]
PARENTS = {
    "corpus": [],
    "trained_model": ["corpus"],
    "evaluation": ["trained_model"],
    "deployment": ["evaluation"],
    "quorum_review": ["evaluation"],
}
MAIN_JOB = {"corpus", "trained_model", "evaluation", "deployment"}


def deps() -> list[Dependency]:
    return [
        Dependency("partner:claude", "partner API (anthropic)", "partner", "http://x", "auto"),
        Dependency("mlflow", "MLflow", "sovereign", "sqlite:///m.db", "retry"),
        Dependency("gateway", "gateway", "sovereign", "http://g", "restart"),
        Dependency("engines", "engines", "sovereign", "http://e", "restart"),
        *inventory.package_dependencies(
            {"serving": {"fastapi": "1.0", "torch": "2.0"}, "training": {"torch": "2.0"}}
        ),
    ]


def test_critical_path_is_the_served_asset_and_its_ancestors_in_the_main_job() -> None:
    assert inventory.critical_path(PARENTS, "deployment", MAIN_JOB) == MAIN_JOB
    assert inventory.critical_path(PARENTS, "deployment", MAIN_JOB - {"corpus"}) == (
        MAIN_JOB - {"corpus"}
    )


def test_a_partner_off_the_critical_path_is_fine() -> None:
    uses = [
        AssetUse("evaluation", frozenset({"mlflow"})),
        AssetUse("quorum_review", frozenset({"@partners"}), ("resource partners",)),
    ]
    assert inventory.violations(deps(), uses, MAIN_JOB) == []


def test_a_partner_on_the_critical_path_is_named_with_the_asset() -> None:
    uses = [AssetUse("trained_model", frozenset({"@partners", "mlflow"}), ("resource partners",))]
    [problem] = inventory.violations(deps(), uses, MAIN_JOB)
    assert "critical-path asset 'trained_model' depends on partner 'claude'" in problem
    assert "(resource partners)" in problem


def test_rows_mark_critical_dependencies_and_routes() -> None:
    d = deps()
    uses = [
        AssetUse("evaluation", frozenset({"mlflow"})),
        AssetUse("quorum_review", frozenset({"@partners"})),
    ]
    routes = inventory.route_needs({"auto": ["claude", "sovereign-lm"]}, d)
    table = {r.dependency.name: r for r in inventory.rows(d, uses, routes, MAIN_JOB)}
    claude = table["partner:claude"]
    assert claude.assets == ("quorum_review",) and claude.routes == ("auto",)
    assert not claude.critical
    assert table["mlflow"].critical and table["mlflow"].assets == ("evaluation",)
    assert table["gateway"].routes == ("auto", "sovereign-lm") and table["gateway"].critical
    torch = table["package:torch"]
    assert torch.dependency.code_paths == ("serving", "training") and torch.critical
    text = inventory.markdown(list(table.values()))
    assert "| partner:claude | partner |" in text and "| no |" in text


def test_packages_of_a_code_path_are_found_from_its_source_with_versions() -> None:
    serving = inventory.imported_distributions(REPO, ["serving"])
    training = inventory.imported_distributions(REPO, ["training"])
    assert {"fastapi", "uvicorn", "httpx", "openai"} <= set(serving)
    assert {"torch", "transformers", "safetensors", "tokenizers"} <= set(training)
    assert all(v for k, v in training.items() if k in {"torch", "transformers"})
    assert "dagster" not in training  # the training program runs without the orchestrator
    assert not {"os", "json", "serving", "training"} & (set(serving) | set(training))


@pytest.mark.parametrize("group", ["@serving-packages", "@training-packages", "@partners"])
def test_groups_expand_to_their_members(group: str) -> None:
    expanded = inventory.expand([group], deps())
    expected = {
        "@serving-packages": {"package:fastapi", "package:torch"},
        "@training-packages": {"package:torch"},
        "@partners": {"partner:claude"},
    }[group]
    assert expanded == expected
