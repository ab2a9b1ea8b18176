"""Contract: deploy/helm/dagster-values.yaml configures the official Dagster chart as the
production twin of the embedded instance.

The chart and its values.schema.json cannot be fetched here (no Helm repository access),
so this checks what can be checked offline, and deploy/README.md says so:
- only top-level keys the chart defines, and the required fields of a user deployment;
- the code location runs ``dagster api grpc -m <workspace.yaml's module>`` from the image
  the manifests use, with env sources, claims and the pod fragments (security contexts,
  resources, volumes) valid against the Kubernetes schemas and defined in deploy/;
- the instance config the chart renders from these values, for the parts we set (run
  launcher, run coordinator), is accepted by Dagster's own config schema for
  ``K8sRunLauncher`` and ``QueuedRunCoordinator``;
- the run queue's tag limits equal the embedded instance's (mlops/lake-writer: 1), and the
  PostgreSQL password comes from a Secret that deploy/ defines, under the chart's key.
"""

from __future__ import annotations

import importlib.util
import re

import kubernetes_validate
import pytest
import yaml
from dagster._config import Shape, process_config
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_k8s import K8sRunLauncher

#: Top-level keys of the Dagster chart's values (from its values.schema.json).
CHART_KEYS = {
    "dagsterWebserver",
    "dagster-user-deployments",
    "postgresql",
    "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret",
    "rabbitmq",
    "redis",
    "flower",
    "ingress",
    "imagePullSecrets",
    "computeLogManager",
    "scheduler",
    "runLauncher",
    "pythonLogs",
    "dagsterDaemon",
    "busybox",
    "migrate",
    "telemetry",
    "serviceAccount",
    "global",
    "retention",
    "additionalInstanceConfig",
}
RELEASE, NAMESPACE = "dagster", "sovereign-mlops"


@pytest.fixture(scope="module")
def values(repo):
    return yaml.safe_load((repo / "deploy/helm/dagster-values.yaml").read_text())


@pytest.fixture(scope="module")
def code_location(values):
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_only_chart_keys(values):
    assert set(values) <= CHART_KEYS


def test_code_location_serves_the_workspace_module(values, code_location, repo, manifests):
    assert values["dagster-user-deployments"]["enabled"] is True
    assert {"name", "image", "port"} <= set(code_location)
    workspace = yaml.safe_load((repo / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    assert code_location["dagsterApiGrpcArgs"] == ["-m", module]
    assert importlib.util.find_spec(module) is not None
    image = code_location["image"]
    assert image["pullPolicy"] in {"Always", "IfNotPresent", "Never"}
    # The same build everywhere; GPU pods use its CUDA variant (tag suffix -cuXYZ).
    ours = {c["image"] for _, _, c in manifests.containers() if "sovereign-mlops" in c["image"]}
    base = f"{image['repository']}:{image['tag']}"
    assert base in ours
    assert all(re.fullmatch(re.escape(base) + r"(-cu\d+)?", i) for i in ours), ours
    assert code_location["includeConfigInLaunchedRuns"]["enabled"] is True


def test_code_location_references_are_defined(code_location, manifests):
    for ref in code_location["envConfigMaps"]:
        assert manifests.data_keys("ConfigMap", ref["name"]) is not None, ref
    for ref in code_location["envSecrets"]:
        assert manifests.data_keys("Secret", ref["name"]) is not None, ref
    volumes = {v["name"]: v for v in code_location["volumes"]}
    for v in volumes.values():
        if "persistentVolumeClaim" in v:
            manifests.get("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
    mounts = {m["mountPath"]: m["name"] for m in code_location["volumeMounts"]}
    assert set(mounts.values()) <= set(volumes)
    home = manifests.get("ConfigMap", "mlops-config").body["data"]["MLOPS_HOME"]
    assert volumes[mounts[home]]["persistentVolumeClaim"]["claimName"] == "mlops-home"
    assert "/tmp" in mounts


def test_code_location_environment_has_what_the_product_reads(code_location, manifests):
    """The variables the domain packages read at run time (MLOPS_HOME, the tracking URI,
    the gateway admin token, the registry's lock database) reach the code location and,
    through includeConfigInLaunchedRuns, every run pod."""
    env: set[str] = set()
    for ref in code_location["envConfigMaps"]:
        env |= manifests.data_keys("ConfigMap", ref["name"]) or set()
    for ref in code_location["envSecrets"]:
        env |= manifests.data_keys("Secret", ref["name"]) or set()
    assert {
        "MLOPS_HOME",
        "MLFLOW_TRACKING_URI",
        "MLOPS_GATEWAY_ADMIN_TOKEN",
        "MLOPS_REGISTRY_LOCK_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "HF_HUB_OFFLINE",
    } <= env


def _pod(code_location, container_extra=None):
    container = {
        "name": "code",
        "image": "img",
        "resources": code_location["resources"],
        "securityContext": code_location["securityContext"],
        "volumeMounts": code_location["volumeMounts"],
        **(container_extra or {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "code-location"},
        "spec": {
            "securityContext": code_location["podSecurityContext"],
            "volumes": code_location["volumes"],
            "containers": [container],
        },
    }


def test_code_location_pod_fragments_match_kubernetes_schema(code_location):
    kubernetes_validate.validate(
        _pod(code_location), kubernetes_validate.latest_version(), strict=True
    )
    assert code_location["podSecurityContext"]["runAsNonRoot"] is True
    assert code_location["securityContext"]["readOnlyRootFilesystem"] is True
    with pytest.raises(kubernetes_validate.ValidationError):
        broken = _pod(code_location, {"securityContext": {"readOnlyRootFs": True}})
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def render_instance(values: dict) -> dict:
    """The run launcher and run coordinator sections of the dagster.yaml the chart renders
    (templates/helpers/instance/_run-launcher.tpl and _run-coordinator.tpl), for the keys
    these values use. The chart adds the fields it owns: instance ConfigMap, DAGSTER_HOME,
    namespace, ServiceAccount and the PostgreSQL password Secret."""
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    config = {_snake(k): v for k, v in launcher["config"]["k8sRunLauncher"].items()}
    for key in ("env_config_maps", "env_secrets"):  # the chart renders the names only
        if key in config:
            config[key] = [ref["name"] for ref in config[key]]
    if "run_k8s_config" in config:
        config["run_k8s_config"] = {_snake(k): v for k, v in config["run_k8s_config"].items()}
    config.update(
        instance_config_map=f"{RELEASE}-instance",
        dagster_home="/opt/dagster/dagster_home",
        job_namespace=config.get("job_namespace") or NAMESPACE,
        service_account_name=RELEASE,
        postgres_password_secret=values["global"]["postgresqlSecretName"],
    )
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    return {
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config},
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {_snake(k): v for k, v in queued.items()},
        },
    }


def _config_errors(instance: dict) -> list[str]:
    errors = []
    for section, cls in (
        ("run_launcher", K8sRunLauncher),
        ("run_coordinator", QueuedRunCoordinator),
    ):
        result = process_config(Shape(cls.config_type()), instance[section]["config"])
        errors += [e.message for e in result.errors or []]
    return errors


def test_rendered_instance_config_is_accepted_by_dagster(values):
    assert _config_errors(render_instance(values)) == []


def test_dagster_config_check_rejects_a_misspelt_key(values):
    broken = yaml.safe_load(yaml.safe_dump(values))
    broken["runLauncher"]["config"]["k8sRunLauncher"]["failPodOnRunFailures"] = True
    assert any("fail_pod_on_run_failures" in e for e in _config_errors(render_instance(broken)))


def test_run_container_resources_are_valid_kubernetes(values):
    resources = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"][
        "containerConfig"
    ]["resources"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "run"},
        "spec": {"containers": [{"name": "run", "image": "img", "resources": resources}]},
    }
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_run_queue_matches_the_embedded_instance(values, repo):
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    limits = [{"key": t["key"], "limit": t["limit"]} for t in queued["tagConcurrencyLimits"]]
    for name in ("dagster.yaml", "dagster-postgres.yaml"):
        instance = yaml.safe_load((repo / "deploy/dagster" / name).read_text())
        assert limits == instance["run_queue"]["tag_concurrency_limits"], name
    assert {"key": "mlops/lake-writer", "limit": 1} in limits
    postgres = yaml.safe_load((repo / "deploy/dagster/dagster-postgres.yaml").read_text())
    assert queued["maxConcurrentRuns"] == postgres["run_queue"]["max_concurrent_runs"]


def test_instance_database_is_external_with_password_from_a_secret(values, manifests):
    pg = values["postgresql"]
    assert pg["enabled"] is False
    assert pg["postgresqlHost"] and pg["postgresqlDatabase"] and pg["postgresqlUsername"]
    assert pg["postgresqlPassword"] == ""
    assert values["generatePostgresqlPasswordSecret"] is False
    keys = manifests.data_keys("Secret", values["global"]["postgresqlSecretName"])
    assert keys is not None and "postgresql-password" in keys
