"""Contract: the registry domain's Dagster graph (evaluation -> registered_model -> champion,
the blocking ``gate`` check, the ``promote`` and ``rollback`` jobs) evaluates, registers and
promotes a model end to end on the embedded MLflow store; a model failing the gate is
registered but stops before ``champion``; rollback is safe to run twice; the alias history
shows on the champion's materializations, the rollback's among them."""

from __future__ import annotations

import dagster as dg
import pytest

from orchestration.defs import registry as registry_domain
from orchestration.defs.registry import MlflowResource
from orchestration.defs.registry.assets import champion, evaluation, registered_model
from orchestration.resources import MlopsHome
from registry import CHALLENGER, CHAMPION, PREVIOUS

pytestmark = pytest.mark.slow
PERMISSIVE = {"min_exact_match": 0.0, "max_perplexity": 1e9, "max_examples": 20}


def test_graph_shape():
    # The shared ``mlops`` resource comes from the code location's root definitions.
    merged = dg.Definitions.merge(
        registry_domain.defs, dg.Definitions(resources={"mlops": MlopsHome()})
    )
    graph = merged.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"evaluation", "registered_model", "champion"} <= keys
    assert graph.get(registered_model.key).parent_keys == {evaluation.key}
    assert graph.get(champion.key).parent_keys == {registered_model.key}
    assert graph.get(evaluation.key).parent_keys == {
        dg.AssetKey("trained_model"),
        dg.AssetKey("eval_suites"),
    }
    [check] = registry_domain.defs.asset_checks
    assert next(iter(check.check_specs)).blocking
    assert {j.name for j in registry_domain.defs.jobs} == {"promote", "rollback"}


@pytest.fixture
def defs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    deploy = dg.define_asset_job(
        "deploy", selection=dg.AssetSelection.assets(evaluation, registered_model, champion)
    )
    return dg.Definitions(
        assets=[
            dg.AssetSpec("trained_model"),
            dg.AssetSpec("eval_suites"),
            evaluation,
            registered_model,
            champion,
        ],
        asset_checks=registry_domain.defs.asset_checks,
        jobs=[deploy, *registry_domain.defs.jobs],
        resources={"mlops": MlopsHome(), "mlflow_registry": MlflowResource()},
    )


def train(instance, model_dir, corpus):
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "trained_model",
            metadata={"model_path": str(model_dir), "data_path": str(corpus), "data_version": 0},
        )
    )


def deploy(defs, instance, gate: dict):
    return defs.resolve_job_def("deploy").execute_in_process(
        instance=instance,
        run_config={"ops": {"evaluation": {"config": gate}}},
        raise_on_error=False,
    )


def test_evaluate_register_promote_block_and_rollback(defs, variant, untrained_model, corpus):
    client = MlflowResource().client()
    assert client.config.tracking_uri.startswith("sqlite:///")  # the embedded default
    with dg.instance_for_test() as instance:
        train(instance, variant(1), corpus)
        first = deploy(defs, instance, PERMISSIVE)
        assert first.success
        assert client.aliases() == {CHALLENGER: "1", CHAMPION: "1"}
        meta = first.asset_materializations_for_node("registered_model")[0].metadata
        assert meta["model_version"].value == "1"
        assert meta["mlflow_run"].value.startswith("http://127.0.0.1:5000/#/experiments/")
        assert "| perplexity |" in meta["comparison"].value  # no eval suite: perplexity
        evaluated = first.asset_materializations_for_node("evaluation")[0].metadata
        assert evaluated["gate_basis"].value == "perplexity"
        assert client.version_tags("1")["gate.basis"] == "perplexity"
        assert meta["lineage.data_version"].value == "0"

        train(instance, untrained_model, corpus)  # default floors: an untrained model fails
        blocked = deploy(defs, instance, {"max_examples": 20})
        assert not blocked.success
        [check] = blocked.get_asset_check_evaluations()
        assert not check.passed
        assert not blocked.asset_materializations_for_node("champion")
        assert client.version_tags("2")["gate.passed"] == "false"
        assert client.aliases() == {CHALLENGER: "1", CHAMPION: "1"}

        train(instance, variant(3), corpus)
        third = deploy(defs, instance, PERMISSIVE)
        assert third.success
        evaluated = third.asset_materializations_for_node("evaluation")[0].metadata
        assert evaluated["champion_version"].value == "1"  # compared with the champion
        assert client.aliases() == {CHALLENGER: "3", CHAMPION: "3", PREVIOUS: "1"}
        shown = third.asset_materializations_for_node("champion")[0].metadata["alias_history"]
        assert f"| champion | 1 | 3 | promotion | dagster:{third.run_id} |" in shown.value
        assert "| challenger | 1 | 3 | registration |" in shown.value

        promote = defs.resolve_job_def("promote").execute_in_process(instance=instance)
        assert promote.success  # already champion: a no-op
        assert (
            promote.asset_materializations_for_node("champion")[0].metadata["changed"].value
            is False
        )

        rollback = defs.resolve_job_def("rollback")
        config = {"ops": {"rollback_op": {"config": {"reason": "canary failed"}}}}
        rolled = rollback.execute_in_process(instance=instance, run_config=config)
        assert rolled.success and client.aliases()[CHAMPION] == "1"
        [recorded] = rolled.asset_materializations_for_node("rollback_op")
        shown = recorded.metadata["alias_history"].value
        assert f"| champion | 3 | 1 | rollback | dagster:{rolled.run_id} | canary failed |" in shown
        latest = instance.get_latest_materialization_event(champion.key).asset_materialization
        assert latest.metadata["champion"].value == "1"  # Dagster names what MLflow serves
        assert latest.metadata["reason"].value == "canary failed"
        assert rollback.execute_in_process(instance=instance, run_config=config).success
        assert client.aliases() == {CHALLENGER: "3", CHAMPION: "1", PREVIOUS: "1"}
        assert client.version_tags("3")["rollback.reason"] == "canary failed"

        refused = defs.resolve_job_def("promote").execute_in_process(
            instance=instance, raise_on_error=False
        )
        assert not refused.success  # the rolled-back challenger needs a forced promotion
        assert client.aliases()[CHAMPION] == "1"
