"""Contract: the manifests fit together and meet the platform's baseline.

Cross-references: every Service and PodDisruptionBudget selects pods some workload
creates, every port a Service or probe names is declared by the container, every Secret,
ConfigMap (and key), PVC, ServiceAccount, Namespace and volume referenced is defined, and
every ``$(VAR)`` a command expands is in the container's environment. Each rule is also
shown to fire on a deliberately broken copy. Baseline: app.kubernetes.io labels, resource
requests and memory limits, non-root pods with a read-only root filesystem and no
capabilities, pinned images, probes on every long-running container, and no API token
mounted into pods that never call the API.
"""

from __future__ import annotations

import pytest


def test_no_dangling_references(manifests):
    assert manifests.reference_problems() == []


def _broken(manifests, kind, name, mutate):
    m = manifests.copy()
    mutate(m.get(kind, name).body)
    return " | ".join(m.reference_problems())


def _gateway_container(body):
    return body["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("kind", "name", "mutate", "expected"),
    [
        (
            "Service",
            "gateway",
            lambda b: b["spec"]["selector"].update({"app.kubernetes.io/name": "gatway"}),
            "which no pod template has",
        ),
        (
            "Service",
            "vllm-canary",
            lambda b: b["spec"]["ports"][0].update(targetPort="metrics"),
            "uses port 'metrics'",
        ),
        (
            "PodDisruptionBudget",
            "gateway",
            lambda b: b["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "x"}),
            "which no pod template has",
        ),
        (
            "Deployment",
            "gateway",
            lambda b: _gateway_container(b)["readinessProbe"]["httpGet"].update(port="web"),
            "readinessProbe uses port 'web'",
        ),
        (
            "Deployment",
            "gateway",
            lambda b: _gateway_container(b)["env"][0]["valueFrom"]["secretKeyRef"].update(
                key="tok"
            ),
            "key 'tok'",
        ),
        (
            "Deployment",
            "mlflow",
            lambda b: b["spec"]["template"]["spec"]["containers"][0]["envFrom"][1][
                "secretRef"
            ].update(name="mlflow-db"),
            "envFrom Secret 'mlflow-db' is not defined",
        ),
        (
            "Deployment",
            "mlflow",
            lambda b: b["spec"]["template"]["spec"]["containers"][0]["command"].append(
                "$(MLFLOW_DB_URI)"
            ),
            "expands $(MLFLOW_DB_URI)",
        ),
        (
            "Deployment",
            "vllm-stable",
            lambda b: b["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"].update(
                claimName="model-store"
            ),
            "PersistentVolumeClaim 'model-store'",
        ),
        (
            "Job",
            "sovereign-lm-train-indexed",
            lambda b: b["spec"]["template"]["spec"]["volumes"][1]["configMap"].update(name="cfg"),
            "ConfigMap 'cfg'",
        ),
        (
            "Deployment",
            "gateway",
            lambda b: b["spec"]["template"]["spec"].update(serviceAccountName="gateway"),
            "ServiceAccount 'gateway'",
        ),
        (
            "Deployment",
            "gateway",
            lambda b: _gateway_container(b)["volumeMounts"].append(
                {"name": "x", "mountPath": "/x"}
            ),
            "mounts volume 'x'",
        ),
        (
            "ConfigMap",
            "mlops-config",
            lambda b: b["metadata"].update(namespace="mlops"),
            "namespace 'mlops', which is not defined",
        ),
        (
            "NetworkPolicy",
            "vllm",
            lambda b: b["spec"]["podSelector"]["matchLabels"].update(
                {"app.kubernetes.io/name": "vlm"}
            ),
            "which no pod template has",
        ),
        (
            "NetworkPolicy",
            "mlflow",
            lambda b: b["spec"]["ingress"][0]["ports"][0].update(port=8080),
            "uses port 8080",
        ),
    ],
    ids=[
        "svc-selector",
        "svc-target-port",
        "pdb-selector",
        "probe-port",
        "secret-key",
        "envfrom-secret",
        "env-expansion",
        "pvc",
        "configmap-volume",
        "service-account",
        "volume-mount",
        "namespace",
        "netpol-selector",
        "netpol-port",
    ],
)
def test_reference_check_catches(manifests, kind, name, mutate, expected):
    assert expected in _broken(manifests, kind, name, mutate)


# --- baseline -----------------------------------------------------------------------------


def test_every_object_carries_the_standard_labels(manifests):
    for d in manifests.docs:
        labels = d.body["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "sovereign-mlops", d
        assert labels.get("app.kubernetes.io/name"), d
    for owner, where, template in manifests.pod_templates():
        pod_labels = template["metadata"]["labels"]
        assert pod_labels.get("app.kubernetes.io/name"), f"{owner!r} {where}"
        assert pod_labels.get("app.kubernetes.io/part-of") == "sovereign-mlops", owner


def test_every_container_requests_resources_and_caps_memory(manifests):
    for owner, _, c in manifests.containers():
        resources = c.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), (owner, c["name"])
        assert "memory" in resources.get("limits", {}), (owner, c["name"])
        gpus = resources.get("limits", {}).get("nvidia.com/gpu")
        # Extended resources cannot be overcommitted: request must equal limit.
        assert resources["requests"].get("nvidia.com/gpu") == gpus, (owner, c["name"])


def test_pods_run_unprivileged(manifests):
    for owner, where, template in manifests.pod_templates():
        pod = template["spec"]
        ctx = pod.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True, f"{owner!r} {where}"
        assert ctx.get("runAsUser", 0) > 0, owner
        assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", owner
        assert pod.get("automountServiceAccountToken") is False, owner
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, (owner, c["name"])
            assert sc.get("readOnlyRootFilesystem") is True, (owner, c["name"])
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], (owner, c["name"])
            # A read-only root needs somewhere to write temporary files.
            assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), owner


def test_images_are_pinned(manifests):
    for owner, _, c in manifests.containers():
        name, _, tag = c["image"].rpartition(":")
        assert name and tag and tag != "latest", (owner, c["image"])


def test_long_running_containers_have_probes(manifests):
    for d in manifests.of_kind("Deployment"):
        for c in d.body["spec"]["template"]["spec"]["containers"]:
            assert c["readinessProbe"]["httpGet"]["path"] == "/health", (d, c["name"])
            assert c["livenessProbe"]["httpGet"]["path"] == "/health", (d, c["name"])


def test_single_writer_volumes_are_never_shared_by_two_pods(manifests):
    """A ReadWriteOnce claim mounted by a Deployment must not be mounted by two pods at
    once: one replica, and Recreate so the old pod lets go before the new one starts."""
    rwo = {
        d.name
        for d in manifests.of_kind("PersistentVolumeClaim")
        if d.body["spec"]["accessModes"] == ["ReadWriteOnce"]
    }
    for d in manifests.of_kind("Deployment"):
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in d.body["spec"]["template"]["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        if claims & rwo:
            assert d.body["spec"]["replicas"] == 1, d
            assert d.body["spec"]["strategy"]["type"] == "Recreate", d
