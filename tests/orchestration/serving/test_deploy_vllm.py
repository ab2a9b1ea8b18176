"""Contract: the engine of the ``deploy`` job (and of ``train_and_deploy``, which shares the
``serving_stack`` resource) is chosen in run config, ``resources: {serving_stack: {config:
{engine: vllm}}}``. With vLLM missing the run fails at once naming ``make vllm`` and
nothing is started; with vLLM installed (``make vllm``) the challenger is served by a real
vLLM process behind the gateway, promoted, and answers the ``openai`` client.
"""

import dagster as dg
import deltalake
import openai
import pyarrow as pa
import pytest

from evaluation import EvaluationConfig, GateConfig, evaluate
from evaluation.reference_model import build_reference_model
from ingestion.records import normalise_text, record_id
from ingestion.sample import generate_records
from orchestration.defs import serving as serving_domain
from orchestration.defs.registry import MlflowResource
from orchestration.defs.serving import ServingStack
from orchestration.resources import MlopsHome
from registry import CHALLENGER, CHAMPION, lineage_of, register_version
from serving import stack
from serving.stack import ROUTE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a vLLM start takes minutes
VLLM = {"resources": {"serving_stack": {"config": {"engine": "vllm"}}}}
FAST = {"ops": {"deployment": {"config": {"probe_count": 5}}}}
PERMISSIVE = GateConfig(
    min_exact_match=0.0, max_perplexity=1e9, exact_match_tolerance=1.0, perplexity_tolerance=1e9
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("deploy-vllm-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(home))
        mp.setenv("MLOPS_GATEWAY_ADMIN_TOKEN", "deploy-vllm-token")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        texts = [normalise_text(r["text"]) for r in generate_records(600, seed=7)]
        corpus = home / "lake" / "corpus"
        table = pa.table({"record_id": [record_id(t) for t in texts], "text": texts})
        deltalake.write_deltalake(str(corpus), table)
        model = build_reference_model(tmp_path_factory.mktemp("models") / "untrained")
        domain = serving_domain.defs
        resources = {
            "mlops": MlopsHome(),
            "mlflow_registry": MlflowResource(),
            "serving_stack": ServingStack(),
        }
        defs = dg.Definitions(
            assets=[dg.AssetSpec("registered_model"), *domain.assets],
            jobs=domain.jobs,
            resources=resources,
        )
        client = MlflowResource().client()
        report = evaluate(model, corpus, 0, EvaluationConfig(max_examples=10, gate=PERMISSIVE))
        lineage = lineage_of(model, "", data_path=str(corpus), data_version=0)
        version = register_version(client, model, report, lineage).version
        try:
            with dg.instance_for_test() as instance:
                yield {
                    "home": home,
                    "defs": defs,
                    "instance": instance,
                    "client": client,
                    "version": version,
                    "mp": mp,
                }
        finally:
            stack.down(home)


def deploy(env, run_config: dict) -> dg.ExecuteInProcessResult:
    return (
        env["defs"]
        .resolve_job_def("deploy")
        .execute_in_process(
            instance=env["instance"], run_config={**FAST, **run_config}, raise_on_error=False
        )
    )


def test_vllm_missing_fails_the_deploy_at_once_naming_the_install(env, tmp_path):
    env["mp"].setenv("MLOPS_VLLM_PYTHON", str(tmp_path / "missing" / "python"))
    try:
        result = deploy(env, VLLM)
    finally:
        env["mp"].delenv("MLOPS_VLLM_PYTHON")
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "`make vllm`" in failure
    assert stack.status(env["home"])["running"] is False
    assert env["client"].aliases() == {CHALLENGER: env["version"]}


def test_deploy_with_engine_vllm_serves_the_challenger_on_vllm(env):
    result = deploy(env, VLLM)
    assert result.success
    assert env["client"].aliases() == {CHALLENGER: env["version"], CHAMPION: env["version"]}
    status = stack.status(env["home"])
    [engine] = status["engines"].values()
    assert engine["engine"] == "vllm" and engine["healthy"]
    gateway = status["gateway"]["url"]
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=120)
    completion = client.completions.create(model=ROUTE, prompt="Q: 1 A:", max_tokens=4)
    assert completion.model == ROUTE and completion.usage.completion_tokens >= 1
    # vLLM answered, not the embedded engine: its responses carry vLLM's fingerprint
    assert (completion.system_fingerprint or "").startswith("vllm-")
