"""Contract: the ``deploy`` job serves and promotes the registry's challenger through a canary
rollout, and ``canary_health_sensor`` rolls back a canary that dies while no rollout watches.

One rollout history on one embedded MLflow store and one real serving stack (supervisor,
gateway and embedded engines on loopback), in order:

1. no champion yet: the gated challenger is served as the stable backend and promoted;
2. a good challenger: canary steps pass, it becomes champion, the gateway serves it;
   after each promotion, `champion`'s latest materialization in Dagster names the version
   the MLflow alias points at;
3. a challenger with random weights (let through by a permissive gate): the canary's probes
   fail, it is rolled back, the aliases stay, the reason is tagged on the version, the
   ``canary_passed`` check warns; a re-run does not try it again;
4. a canary left live by a crashed rollout, its engine SIGKILLed: one sensor tick puts the
   weight back to 0 and tags the version.

Models are ``evaluation.reference_model`` builds: trained for 300 steps (answers about a fifth
of the held-out tasks exactly) or untrained (answers none).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import deltalake
import openai
import pyarrow as pa
import pytest
from safetensors.torch import load_file, save_file

from evaluation import EvaluationConfig, GateConfig, evaluate
from evaluation.reference_model import ReferenceModelConfig, build_reference_model
from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records
from orchestration.defs import serving as serving_domain
from orchestration.defs.registry import MlflowResource
from orchestration.defs.serving import ServingStack
from orchestration.defs.serving.rollout import RolloutRecord
from orchestration.defs.serving.sensors import canary_health_sensor
from orchestration.resources import MlopsHome
from registry import CHALLENGER, CHAMPION, PREVIOUS, lineage_of, register_version
from registry.versions import fetch_model_dir
from serving import stack
from serving.stack import ROUTE, engine_name

pytestmark = pytest.mark.slow
FAST = {"steps": [50.0, 100.0], "window_s": 1.0}
PERMISSIVE = GateConfig(
    min_exact_match=0.0, max_perplexity=1e9, exact_match_tolerance=1.0, perplexity_tolerance=1e9
)


def copy_with_new_bytes(source: Path, out: Path, tag: str) -> Path:
    """The same weights under other safetensors metadata: a distinct registered artifact
    (its digest differs) that answers exactly as ``source`` does."""
    out.mkdir(parents=True)
    for f in source.iterdir():
        if f.name != "model.safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    save_file(load_file(source / "model.safetensors"), out / "model.safetensors", {"copy": tag})
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("deploy-home")
    models = tmp_path_factory.mktemp("deploy-models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(home))
        mp.setenv("MLOPS_GATEWAY_ADMIN_TOKEN", "deploy-test-token")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("OMP_NUM_THREADS", "1")  # engines of a tiny model gain nothing from threads
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        texts = [normalise_text(r["text"]) for r in generate_records(2000, seed=7)]
        corpus = home / "lake" / "corpus"
        table = pa.table({"record_id": [record_id(t) for t in texts], "text": texts})
        deltalake.write_deltalake(str(corpus), table)
        trained = build_reference_model(models / "trained", ReferenceModelConfig(train_steps=600))
        resources = {
            "mlops": MlopsHome(),
            "mlflow_registry": MlflowResource(),
            "serving_stack": ServingStack(startup_timeout_s=120.0),
        }
        domain = serving_domain.defs
        defs = dg.Definitions(  # the domain as the code location merges it, upstream stubbed
            assets=[dg.AssetSpec("registered_model"), *domain.assets],
            jobs=domain.jobs,
            sensors=domain.sensors,
            resources=resources,
        )
        try:
            with dg.instance_for_test() as instance:
                yield {
                    "home": home,
                    "corpus": corpus,
                    "models": models,
                    "trained": trained,
                    "defs": defs,
                    "resources": resources,
                    "instance": instance,
                    "client": MlflowResource().client(),
                    "sources": {},  # registry version -> the directory it was registered from
                }
        finally:
            stack.down(home)


def register(env, model_dir: Path, gate: GateConfig | None = None) -> str:
    """Evaluate ``model_dir`` against the current champion and register it, as ``train`` does."""
    client = env["client"]
    champion = client.aliases().get(CHAMPION)
    report = evaluate(
        model_dir,
        env["corpus"],
        0,
        EvaluationConfig(max_examples=20, gate=gate or GateConfig()),
        champion_dir=env["sources"][champion] if champion else None,
        champion_version=champion,
    )
    lineage = lineage_of(model_dir, "", data_path=str(env["corpus"]), data_version=0)
    version = register_version(client, model_dir, report, lineage).version
    env["sources"][version] = model_dir
    return version


def deploy(env) -> dg.ExecuteInProcessResult:
    result = (
        env["defs"]
        .resolve_job_def("deploy")
        .execute_in_process(
            instance=env["instance"], run_config={"ops": {"deployment": {"config": FAST}}}
        )
    )
    assert result.success
    return result


def outcome(result) -> tuple[dict, dg.AssetCheckEvaluation]:
    [materialization] = [
        m
        for m in result.asset_materializations_for_node("deployment")
        if m.asset_key == dg.AssetKey("deployment")
    ]
    [check] = result.get_asset_check_evaluations()
    return {k: v.value for k, v in materialization.metadata.items()}, check


def champion_shown(env) -> dict:
    """The metadata of `champion`'s latest materialization, as the Dagster UI shows it."""
    event = env["instance"].get_latest_materialization_event(dg.AssetKey("champion"))
    assert event is not None, "champion shows 'Never materialized' in Dagster"
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def served(env) -> tuple[str, str]:
    """(model dir of the engine the route's stable backend runs, text the gateway answers)."""
    status = stack.status(env["home"])
    admin = env["resources"]["serving_stack"].gateway(env["home"])
    route = admin.state()["routes"][ROUTE]
    assert route["canary"] is None and route["canary_weight"] == 0.0
    model_dir = status["engines"][route["stable"]]["model_dir"]
    client = openai.OpenAI(base_url=f"{admin.url}/v1", api_key="unused", max_retries=2, timeout=30)
    completion = client.completions.create(
        model=ROUTE, prompt="Q: what comes after 41? A:", max_tokens=8, temperature=0
    )
    assert completion.model == ROUTE
    return model_dir, completion.choices[0].text


def sensor_ticks(env):
    """``tick(cursor)``: one evaluation of ``canary_health_sensor`` as the daemon runs it."""

    def tick(cursor: str | None = None):
        with dg.build_sensor_context(
            instance=env["instance"], resources=env["resources"], cursor=cursor
        ) as context:
            return canary_health_sensor(context)

    return tick


def test_first_deploy_without_champion_promotes_directly_and_serves(env):
    client = env["client"]
    assert register(env, env["trained"]) == "1"
    assert client.aliases() == {CHALLENGER: "1"}
    meta, check = outcome(deploy(env))
    assert meta["decision"] == "promoted" and "no champion" in meta["reason"]
    assert meta["served_version"] == "1" and check.passed
    assert meta["probes"] == 20 and meta["probe_accuracy"] > 0.05
    assert client.aliases() == {CHALLENGER: "1", CHAMPION: "1"}
    shown = champion_shown(env)  # the alias moved in MLflow: Dagster says so too
    assert shown["champion"] == "1" and shown["kind"] == "first-deployment"
    assert "no champion yet" in shown["reason"] and shown["changed"] is True
    model_dir, text = served(env)
    assert Path(model_dir).is_relative_to(env["home"] / "serving" / "models" / "1")
    assert text.strip()


def test_good_challenger_passes_the_canary_and_is_served(env):
    client = env["client"]
    good = copy_with_new_bytes(env["trained"], env["models"] / "good", "2")
    assert register(env, good) == "2"
    meta, check = outcome(deploy(env))
    assert meta["decision"] == "promoted", meta["reason"]
    assert meta["champion_before"] == "1" and meta["served_version"] == "2" and check.passed
    steps = meta["timeline_data"]
    assert [s["weight"] for s in steps] == [0.0, 50.0, 100.0] and all(s["passed"] for s in steps)
    assert all(s["probe_accuracy"] == s["stable_probe_accuracy"] > 0 for s in steps)
    assert all(s["likelihood"]["verdict"] == "pass" for s in steps)  # same weights
    for step in steps[1:]:  # no user traffic here: the probes are the evidence
        assert step["evidence"]["requests"] >= 20 and step["evidence"]["source"] == "probe"
    assert meta["text_probes"] == 20 and "held-out split" in meta["probe_source"]
    history = meta["alias_history"]  # the move, with who made it, in the asset's metadata
    assert "| champion | 1 | 2 | canary-promotion | dagster:" in history
    assert "| champion | - | 1 | first-deployment | dagster:" in history
    assert "| 100% |" in meta["timeline"] and meta["gateway_url"].startswith("http://127.0.0.1:")
    assert client.aliases() == {CHALLENGER: "2", CHAMPION: "2", PREVIOUS: "1"}
    shown = champion_shown(env)
    assert shown["champion"] == "2" and shown["previous_champion"] == "1"
    assert shown["kind"] == "canary-promotion" and shown["reason"].endswith("against v1")
    assert "| champion | 1 | 2 | canary-promotion | dagster:" in shown["alias_history"]
    model_dir, text = served(env)
    assert Path(model_dir).is_relative_to(env["home"] / "serving" / "models" / "2")
    assert list(stack.status(env["home"])["engines"]) == [engine_name(Path(model_dir))]
    assert text.strip()


def test_random_challenger_is_rolled_back_with_aliases_unchanged(env):
    client = env["client"]
    random_dir = build_reference_model(env["models"] / "random")  # train_steps=0
    assert register(env, random_dir, PERMISSIVE) == "3"
    assert client.aliases()[CHALLENGER] == "3"
    meta, check = outcome(deploy(env))
    assert meta["decision"] == "rolled_back" and "probe accuracy" in meta["reason"]
    assert meta["served_version"] == "2"
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert client.aliases() == {CHALLENGER: "3", CHAMPION: "2", PREVIOUS: "1"}
    assert champion_shown(env)["champion"] == "2"  # a rolled-back canary moved no alias
    tags = client.version_tags("3")
    assert tags["rollback.reason"] == meta["reason"] and tags["canary.decision"] == "rolled_back"
    model_dir, _ = served(env)
    assert Path(model_dir).is_relative_to(env["home"] / "serving" / "models" / "2")
    assert len(stack.status(env["home"])["engines"]) == 1  # the canary's engine is gone

    started = time.monotonic()
    again, check = outcome(deploy(env))  # not retried: it needs a new model or a forced promotion
    assert again["decision"] == "noop" and "rolled back before" in again["reason"]
    assert not check.passed and time.monotonic() - started < 30
    assert client.aliases()[CHAMPION] == "2"


def test_sensor_rolls_back_a_killed_canary_left_by_a_crashed_rollout(env):
    client, home = env["client"], env["home"]
    serving = env["resources"]["serving_stack"]
    version = register(env, copy_with_new_bytes(env["trained"], env["models"] / "v4", "4"))
    admin = serving.gateway(home)
    stable = admin.state()["routes"][ROUTE]["stable"]
    tick = sensor_ticks(env)
    assert isinstance(tick(), dg.SensorResult)  # no canary: skipped

    # What a rollout run leaves behind when it dies at 25%: a routed canary and its record.
    model_dir = fetch_model_dir(client, version, home / "serving" / "models")
    canary = engine_name(model_dir)
    fleet = serving.fleet(home)
    admin.put_backend(canary, fleet.start(canary, model_dir))
    admin.put_route(ROUTE, stable, canary, 25.0)
    RolloutRecord(version, canary, "crashed-run", "2026-01-01T00:00:00+00:00").save(
        serving.paths(home)
    )
    healthy = tick()
    assert not healthy.asset_events and "healthy" in healthy.skip_reason.skip_message
    assert admin.state()["routes"][ROUTE]["canary_weight"] == 25.0

    os.kill(fleet.pid(canary), signal.SIGKILL)
    result = tick(healthy.cursor)
    route = admin.state()["routes"][ROUTE]
    assert route == {"stable": stable, "canary": None, "canary_weight": 0.0}
    assert canary not in admin.state()["backends"] and fleet.pid(canary) is None
    [observation] = result.asset_events
    assert observation.asset_key == dg.AssetKey("deployment")
    assert observation.metadata["decision"].value == "rolled_back"
    assert observation.metadata["canary_version"].value == version
    reason = client.version_tags(version)["rollback.reason"]
    assert reason.startswith("canary_health_sensor: ") and canary in reason
    assert client.aliases()[CHAMPION] == "2"


def test_serving_up_without_model_serves_the_champion_after_down(env):
    """`python -m serving up` with no --model brings back the registry's champion."""
    home = env["home"]
    champion = env["client"].aliases()[CHAMPION]
    assert stack.down(home)
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--home", str(home), "up", "--timeout-s", "120"],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir, text = served(env)
    assert Path(model_dir).is_relative_to(home / "serving" / "models" / champion)
    assert text.strip()
