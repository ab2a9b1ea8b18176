"""Contract: ``quorum_review`` records the partners' verdict on held-out reference answers
beside evaluation, and "no verdict" (never a guess) when no quorum of partners is there.

The evaluation it reads is a recorded ``evaluation`` materialization pointing at a report
over a real Delta corpus; the partners are fake judges behind a real gateway.
"""

import json

import dagster as dg
import deltalake
import pyarrow as pa
import pytest

from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records
from orchestration.defs.partners import PartnerQuorum
from orchestration.defs.partners.review import quorum_review
from orchestration.defs.serving import ServingStack
from orchestration.resources import MlopsHome

pytestmark = pytest.mark.slow


def evaluated(instance, tmp_path) -> None:
    texts = [normalise_text(r["text"]) for r in generate_records(400, seed=3)]
    corpus = tmp_path / "corpus"
    deltalake.write_deltalake(
        str(corpus), pa.table({"record_id": [record_id(t) for t in texts], "text": texts})
    )
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"data_path": str(corpus), "data_version": 0}))
    instance.report_runless_asset_event(
        dg.AssetMaterialization("evaluation", metadata={"report_path": str(report)})
    )


def review(instance) -> dict:
    result = dg.materialize(
        [quorum_review],
        instance=instance,
        resources={
            "mlops": MlopsHome(),
            "serving_stack": ServingStack(),
            "partners": PartnerQuorum(quorum=2),
        },
        run_config={"ops": {"quorum_review": {"config": {"probes": 2}}}},
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("quorum_review")
    return {k: v.value for k, v in materialization.metadata.items()}


def test_no_partners_means_no_verdict(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    with dg.instance_for_test() as instance:
        evaluated(instance, tmp_path)
        meta = review(instance)
    assert meta["verdict"] == "no verdict: the serving stack is not running"
    assert meta["verdicts_reached"] == 0 and meta["probes"] == 2
    assert meta["healthy_partners"] == "none"
    assert meta["review"].count("| no verdict |") == 2


def test_a_stack_without_partners_gives_no_verdict(partner_world, tmp_path) -> None:
    partner_world()
    with dg.instance_for_test() as instance:
        evaluated(instance, tmp_path)
        meta = review(instance)
    assert meta["verdict"] == "no verdict: 0 healthy voter(s) (none), quorum is 2"
    assert meta["verdicts_reached"] == 0 and meta["healthy_partners"] == "none"


def test_a_quorum_of_judges_confirms_the_reference_answers(partner_world, tmp_path) -> None:
    world = partner_world(judge_yes_a="anthropic", judge_yes_b="gemini", judge_no_c="openai")
    with dg.instance_for_test() as instance:
        evaluated(instance, tmp_path)
        meta = review(instance)
    assert meta["verdict"] == "2 of 2 reference answers confirmed, 0 disputed, 0 without a verdict"
    assert meta["healthy_partners"] == "judge-no-c, judge-yes-a, judge-yes-b"
    assert "judge-no-c: no, judge-yes-a: yes, judge-yes-b: yes" in meta["review"]
    assert meta["review"].count("| yes: 2 of 3 voters |") == 2
    assert world.view()["fallback_routes"]["auto"]["pinned"] is None
