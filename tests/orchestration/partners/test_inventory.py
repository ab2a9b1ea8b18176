"""Contract: ``dependency_inventory`` lists every external dependency with its tier, users,
critical-path flag and fallback, and its blocking check ``no_partner_on_critical_path``
passes for the real code location and fails for a wrong wiring, naming asset and partner.

Both run through the real ``dagster asset materialize`` CLI (the check reads the graph of the
code location the run was loaded from). The serving config declares a partner whose key is
in the environment; the key must never reach the metadata.
"""

from pathlib import Path

import dagster as dg
import pytest
import yaml

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
SECRET = "sk-live-never-show-me-4242"


@pytest.fixture
def inventory_stack(stack):
    config = stack.home / "serving" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(
        yaml.safe_dump(
            {
                "partners": {
                    "claude": {
                        "kind": "anthropic",
                        "base_url": "http://127.0.0.1:9",
                        "model": "claude-3-5-haiku-latest",
                        "api_key_env": "INVENTORY_TEST_KEY",
                    }
                },
                "fallback_routes": {"auto": ["claude", "sovereign-lm"]},
            }
        )
    )
    stack.env["INVENTORY_TEST_KEY"] = SECRET
    stack.env.pop("MLFLOW_TRACKING_URI", None)
    return stack


def materialize(stack, *location: str) -> tuple[dict, dg.AssetCheckEvaluation, str]:
    proc = stack.dagster(
        "asset", "materialize", *location, "--select", "dependency_inventory", timeout=300
    )
    output = proc.stdout + proc.stderr
    with dg.DagsterInstance.from_config(str(stack.dagster_home)) as instance:
        [run] = instance.get_runs(limit=1)
        records = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        assert records, output[-3000:]
        data = records[0].event_log_entry.dagster_event.event_specific_data
        metadata = {k: v.value for k, v in data.materialization.metadata.items()}
        [check] = [
            r.event_log_entry.dagster_event.event_specific_data
            for r in instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            ).records
        ]
    return metadata, check, output


def test_real_definitions_keep_partners_off_the_critical_path(inventory_stack) -> None:
    metadata, check, output = materialize(inventory_stack, "-m", "orchestration.definitions")
    assert check.passed, output[-3000:]
    assert check.check_name == "no_partner_on_critical_path"
    assert check.severity == dg.AssetCheckSeverity.ERROR
    table = metadata["dependencies"]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    claude = rows["partner:claude"]
    assert (
        "| partner | partner API (anthropic) | http://127.0.0.1:9 (claude-3-5-haiku-latest) |"
        in claude
    )
    assert "| quorum_review | auto | no | auto: next entry of claude -> sovereign-lm |" in claude
    assert "| yes |" in rows["mlflow"] and "evaluation" in rows["mlflow"]
    assert "| yes |" in rows["lake"] and "| yes |" in rows["dagster-storage"]
    assert "sovereign-lm" in rows["gateway"] and "| yes |" in rows["gateway"]
    assert set(metadata["critical_assets"].split(", ")) == {
        "corpus",
        "corpus_split",
        "eval_suites",
        "trained_model",
        "evaluation",
        "registered_model",
        "deployment",
    }
    packages = metadata["packages"]
    assert {"torch", "transformers", "fastapi", "mlflow", "deltalake"} <= set(packages)
    assert all(packages[p] for p in ("torch", "transformers", "fastapi"))
    assert "| yes |" in rows["package:torch"]
    everything = str(metadata) + str(check.metadata) + (check.description or "")
    assert SECRET not in everything and "INVENTORY_TEST_KEY" not in everything


def test_a_partner_on_the_critical_path_fails_the_check(inventory_stack) -> None:
    wrong = str(HERE / "wrong_wiring.py")
    metadata, check, output = materialize(inventory_stack, "-f", wrong)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "critical-path asset 'trained_model' depends on partner 'claude'" in check.description
    assert "(resource partners)" in check.description
    assert check.metadata["violations"].value == 1
    assert metadata["critical_assets"] == "deployment, trained_model"
    assert SECRET not in str(metadata) + check.description
