"""Contract: ``partner_health_sensor`` reads the real gateway and starts the right job, and
those jobs really move fallback route ``auto`` to the sovereign model and back.

One real serving stack (supervisor, gateway, embedded engine) with two fake partners in
``auto``'s order. The sensor is evaluated as the daemon evaluates it
(``build_sensor_context`` on a real instance) and each run it requests is executed with the
run config it carries. The partner is made to fail for real (500s), and to recover.
"""

import dagster as dg
import openai
import pytest

from orchestration.definitions import defs
from orchestration.defs.partners.sensors import partner_health_sensor
from orchestration.defs.serving import ServingStack
from orchestration.resources import MlopsHome
from serving.stack import ROUTE

pytestmark = pytest.mark.slow
RESOURCES = {"mlops": MlopsHome(), "serving_stack": ServingStack()}


def tick(instance):
    with dg.build_sensor_context(instance=instance, resources=RESOURCES) as context:
        return partner_health_sensor(context)


def execute(instance, request: dg.RunRequest) -> dict:
    result = defs.resolve_job_def(request.job_name).execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("routing_state")
    return {k: v.value for k, v in materialization.metadata.items()}


def answer_through_auto(world) -> str:
    client = openai.OpenAI(
        base_url=f"{world.admin.url}/v1", api_key="unused", timeout=30, max_retries=0
    )
    reply = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    return reply.choices[0].message.content or ""


def test_outage_fails_over_and_sustained_recovery_restores(partner_world, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_PARTNER_SENSOR_INTERVAL_S", "1")
    world = partner_world(claude="anthropic", gpt="openai")
    claude = world.partners["claude"]
    assert "partner:claude" in answer_through_auto(world)
    with dg.instance_for_test() as instance:
        quiet = tick(instance)
        assert isinstance(quiet, dg.SkipReason)
        assert "nothing to do: auto: every partner healthy" in quiet.skip_message

        claude.set_mode("error_500")
        world.wait_state("claude", "down")
        result = tick(instance)
        [request] = result.run_requests
        assert request.job_name == "failover_to_sovereign"
        assert request.run_key.startswith("failover:auto:claude=down@")
        config = request.run_config["ops"]["routing_state"]["config"]
        assert config["action"] == "failover" and config["route"] == "auto"
        seen = config["evidence"]["partners"]
        assert seen["claude"]["state"] == "down" and seen["gpt"]["state"] == "healthy"
        assert seen["claude"]["reason"] and "error_rate" in seen["claude"]["stats"]

        meta = execute(instance, request)
        assert meta["action"] == "failover" and meta["pinned_target"] == ROUTE
        assert meta["changed"] is True and meta["sovereign_started"] is False
        assert meta["pinned_reason"].startswith("failover_to_sovereign: claude down")
        assert meta["evidence"]["partners"]["claude"]["state"] == "down"
        assert "| claude | down |" in meta["partners"]
        route = world.view()["fallback_routes"]["auto"]
        assert route["pinned"] == ROUTE
        assert "partner:" not in answer_through_auto(world)  # the sovereign model answers

        again = execute(instance, request)  # idempotent: already pinned
        assert again["changed"] is False and again["pinned_target"] == ROUTE
        waiting = tick(instance)
        assert isinstance(waiting, dg.SkipReason)
        assert "still waiting for claude down" in waiting.skip_message

        claude.set_mode("ok")
        world.wait_state("claude", "healthy")
        restore = None
        for _ in range(50):  # bounded: healthy for one interval (1 s) is needed first
            result = tick(instance)
            if isinstance(result, dg.SensorResult) and result.run_requests:
                [restore] = result.run_requests
                break
            assert "healthy for less than 1s" in result.skip_message
            world.wait_state("claude", "healthy", timeout_s=1)
        assert restore is not None and restore.job_name == "restore_partners"
        assert restore.run_key == f"restore:auto:{route['pinned_at']}"
        meta = execute(instance, restore)
        assert meta["action"] == "restore" and meta["pinned_target"] == "none"
        assert world.view()["fallback_routes"]["auto"]["pinned"] is None
        assert "partner:claude" in answer_through_auto(world)

        history = instance.fetch_materializations(dg.AssetKey("routing_state"), limit=10)
        actions = [r.asset_materialization.metadata["action"].value for r in history.records]
        assert sorted(actions) == ["failover", "failover", "restore"]


def test_no_stack_is_a_clear_skip(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    with dg.instance_for_test() as instance:
        skipped = tick(instance)
    assert skipped.skip_message == f"serving stack under {tmp_path} is not running"


def test_restore_refuses_a_contradicting_action(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    job = defs.resolve_job_def("restore_partners")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config={"ops": {"routing_state": {"config": {"action": "failover"}}}},
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "job restore_partners only runs action 'restore', got 'failover'" in str(
        failure.step_failure_data.error.message
    )
