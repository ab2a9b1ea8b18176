"""Contract: every manifest under deploy/ is a valid Kubernetes object.

Built-in kinds are validated against the Kubernetes OpenAPI schemas shipped by
``kubernetes-validate`` (offline, strict: an unknown field is an error), for the oldest
Kubernetes release we support and the newest the validator knows. The PyTorchJob custom
resource has no schema there: it is checked structurally against the kubeflow.org/v1 API
(apiVersion, kind, the fields and enums the operator accepts), and each replica's pod
template is validated as a core PodTemplate. Kustomizations must list files that exist, and
every manifest is either reachable from deploy/k8s or one of the documented separate ones.
"""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

MIN_KUBERNETES = "1.29.0"
VERSIONS = [MIN_KUBERNETES, kubernetes_validate.latest_version()]

#: Applied on their own, on purpose (see deploy/README.md): secrets from a secret manager,
#: training runs submitted with `kubectl create` when wanted.
SEPARATE = {
    "deploy/k8s/secrets.example.yaml",
    "deploy/training/config.yaml",
    "deploy/training/job.yaml",
    "deploy/training/pytorchjob.yaml",
}


def _errors(body: dict, version: str) -> str | None:
    try:
        kubernetes_validate.validate(body, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(map(str, exc.path))}: {exc.message}"
    return None


@pytest.mark.parametrize("version", VERSIONS)
def test_builtin_kind_matches_schema(builtin_doc, version):
    assert _errors(builtin_doc.body, version) is None


def test_validator_rejects_unknown_fields_and_wrong_types(manifests):
    gateway = copy.deepcopy(manifests.get("Deployment", "gateway").body)
    gateway["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    assert "readinessProbes" in _errors(gateway, VERSIONS[-1])
    gateway = copy.deepcopy(manifests.get("Deployment", "gateway").body)
    gateway["spec"]["replicas"] = "one"
    assert "replicas" in _errors(gateway, VERSIONS[-1])


# --- PyTorchJob (kubeflow.org/v1), structurally -------------------------------------------

PYTORCHJOB_SPEC = {"pytorchReplicaSpecs", "runPolicy", "elasticPolicy", "nprocPerNode"}
REPLICA_SPEC = {"replicas", "restartPolicy", "template"}
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}
RUN_POLICY = {
    "cleanPodPolicy",
    "ttlSecondsAfterFinished",
    "activeDeadlineSeconds",
    "backoffLimit",
    "schedulingPolicy",
    "suspend",
    "managedBy",
}
CLEAN_POD_POLICIES = {"All", "Running", "None"}


def pytorchjob_problems(body: dict, version: str) -> list[str]:
    problems = []
    if (body.get("apiVersion"), body.get("kind")) != ("kubeflow.org/v1", "PyTorchJob"):
        problems.append("apiVersion/kind must be kubeflow.org/v1 PyTorchJob")
    if not body.get("metadata", {}).get("name"):
        problems.append("metadata.name is required")
    spec = body.get("spec", {})
    problems += [f"spec.{k} is not a PyTorchJob field" for k in set(spec) - PYTORCHJOB_SPEC]
    replicas = spec.get("pytorchReplicaSpecs") or {}
    if not replicas:
        problems.append("spec.pytorchReplicaSpecs is required")
    for role, rs in replicas.items():
        where = f"spec.pytorchReplicaSpecs.{role}"
        if role not in {"Master", "Worker"}:
            problems.append(f"{where}: replica type must be Master or Worker")
        problems += [f"{where}.{k} is not a ReplicaSpec field" for k in set(rs) - REPLICA_SPEC]
        if not isinstance(rs.get("replicas"), int) or rs["replicas"] < 1:
            problems.append(f"{where}.replicas must be a positive integer")
        if role == "Master" and rs.get("replicas") != 1:
            problems.append(f"{where}.replicas must be 1 (the operator allows one master)")
        if rs.get("restartPolicy", "OnFailure") not in RESTART_POLICIES:
            problems.append(f"{where}.restartPolicy must be one of {sorted(RESTART_POLICIES)}")
        template = rs.get("template", {})
        containers = template.get("spec", {}).get("containers", [])
        pytorch = next((c for c in containers if c.get("name") == "pytorch"), None)
        if pytorch is None:
            problems.append(f"{where}: the operator needs a container named 'pytorch'")
        elif not any(p.get("name") == "pytorchjob-port" for p in pytorch.get("ports", [])):
            # The operator derives each replica's Service from this port.
            problems.append(f"{where}: container 'pytorch' declares no 'pytorchjob-port'")
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "replica"},
            "template": template,
        }
        if err := _errors(pod_template, version):
            problems.append(f"{where}.template: {err}")
    run = spec.get("runPolicy", {})
    problems += [f"spec.runPolicy.{k} is not a RunPolicy field" for k in set(run) - RUN_POLICY]
    if run.get("cleanPodPolicy", "None") not in CLEAN_POD_POLICIES:
        problems.append("spec.runPolicy.cleanPodPolicy must be All, Running or None")
    return problems


@pytest.mark.parametrize("version", VERSIONS)
def test_pytorchjob_is_structurally_valid(manifests, version):
    (job,) = manifests.of_kind("PyTorchJob")
    assert pytorchjob_problems(job.body, version) == []


def test_pytorchjob_check_catches_broken_jobs(manifests):
    body = copy.deepcopy(manifests.of_kind("PyTorchJob")[0].body)
    master = body["spec"]["pytorchReplicaSpecs"]["Master"]
    master["replicas"] = 2
    master["template"]["spec"]["containers"][0]["name"] = "trainer"
    master["template"]["spec"]["containers"][0]["gpus"] = 8
    worker = body["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    worker["ports"] = [p for p in worker["ports"] if p["name"] != "pytorchjob-port"]
    body["spec"]["pytorchReplicaSpecs"]["Chief"] = {"replicas": 1}
    problems = " | ".join(pytorchjob_problems(body, VERSIONS[-1]))
    for expected in ("must be 1", "named 'pytorch'", "gpus", "Chief", "'pytorchjob-port'"):
        assert expected in problems


# --- kustomizations ----------------------------------------------------------------------


def _kustomized(folder, repo) -> set[str]:
    """Files reachable from the kustomization in folder, repo-relative."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    files: set[str] = set()
    for entry in kustomization["resources"]:
        target = (folder / entry).resolve()
        assert target.exists(), f"{folder}/kustomization.yaml lists missing {entry}"
        files |= _kustomized(target, repo) if target.is_dir() else {str(target.relative_to(repo))}
    return files


def test_kustomization_covers_every_manifest_but_the_separate_ones(manifests, repo):
    installed = _kustomized(repo / "deploy/k8s", repo)
    every = {str(d.path.relative_to(repo)) for d in manifests.docs}
    assert installed.isdisjoint(SEPARATE)
    assert every - installed == SEPARATE


def test_kustomization_image_override_names_our_image(manifests, repo):
    kustomization = yaml.safe_load((repo / "deploy/k8s/kustomization.yaml").read_text())
    overridden = {i["name"] for i in kustomization["images"]}
    ours = {
        c["image"].split(":")[0]
        for _, _, c in manifests.containers()
        if not c["image"].startswith("vllm/")
    }
    assert ours == overridden == {"sovereign-mlops"}
