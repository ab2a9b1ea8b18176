"""Fixtures for the deployment tests: every Kubernetes manifest under deploy/, loaded once.

``Manifests`` indexes the documents by kind and name and knows where pod templates live
(Deployments, Jobs, PyTorchJob replicas), so each test states a rule once and applies it
to every workload. ``Manifests.reference_problems`` is the cross-reference check; tests
also run it on deliberately broken copies to show it catches what it claims to.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST_DIRS = ("deploy/k8s", "deploy/mlflow", "deploy/training")
#: Kubernetes kinds that are not in a namespace.
CLUSTER_SCOPED = {"Namespace"}
_ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass
class Doc:
    path: Path
    body: dict

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def namespace(self) -> str | None:
        return self.body["metadata"].get("namespace")

    def __repr__(self) -> str:
        return f"{self.kind}/{self.name} ({self.path.relative_to(REPO)})"


def load_docs() -> list[Doc]:
    docs = []
    for folder in MANIFEST_DIRS:
        for path in sorted((REPO / folder).glob("*.yaml")):
            if path.name == "kustomization.yaml":
                continue
            docs += [Doc(path, body) for body in yaml.safe_load_all(path.read_text()) if body]
    return docs


class Manifests:
    def __init__(self, docs: list[Doc]) -> None:
        self.docs = docs

    def copy(self) -> Manifests:
        return Manifests([Doc(d.path, copy.deepcopy(d.body)) for d in self.docs])

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d.kind == kind]

    def get(self, kind: str, name: str) -> Doc:
        found = [d for d in self.docs if d.kind == kind and d.name == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {found}"
        return found[0]

    def pod_templates(self) -> Iterator[tuple[Doc, str, dict]]:
        """(owner, where, pod template) for every workload that creates pods."""
        for d in self.docs:
            spec = d.body.get("spec", {})
            if d.kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
                yield d, "spec.template", spec["template"]
            elif d.kind == "PyTorchJob":
                for role, replica in spec["pytorchReplicaSpecs"].items():
                    yield d, f"spec.pytorchReplicaSpecs.{role}.template", replica["template"]

    def containers(self) -> Iterator[tuple[Doc, dict, dict]]:
        """(owner, pod spec, container) for every container and init container."""
        for owner, _, template in self.pod_templates():
            pod = template["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                yield owner, pod, c

    def data_keys(self, kind: str, name: str) -> set[str] | None:
        """Keys of a Secret or ConfigMap, or None when no such object is defined."""
        for d in self.of_kind(kind):
            if d.name == name:
                return set(d.body.get("data", {})) | set(d.body.get("stringData", {}))
        return None

    def container_env(self, container: dict) -> dict[str, str | None]:
        """Every variable a container sees: env entries plus the keys of its envFrom
        sources (values for ConfigMap literals, None where the value is secret)."""
        env: dict[str, str | None] = {}
        for src in container.get("envFrom", []):
            if "configMapRef" in src:
                cm = self.get("ConfigMap", src["configMapRef"]["name"])
                env.update(cm.body.get("data", {}))
            if "secretRef" in src:
                env.update(dict.fromkeys(self.data_keys("Secret", src["secretRef"]["name"]) or ()))
        for e in container.get("env", []):
            env[e["name"]] = e.get("value")
        return env

    def reference_problems(self) -> list[str]:
        """Every dangling reference between the manifests, as readable sentences."""
        return (
            self._namespace_problems()
            + self._selector_problems()
            + self._container_problems()
            + self._pod_problems()
        )

    def _defined(self, kind: str, name: str) -> bool:
        return any(d.kind == kind and d.name == name for d in self.docs)

    def _selected(self, doc: Doc, selector: dict) -> list[tuple[Doc, dict]]:
        """Pod templates in doc's namespace whose labels include the selector."""
        return [
            (owner, t)
            for owner, _, t in self.pod_templates()
            if owner.namespace == doc.namespace
            and selector.items() <= t["metadata"].get("labels", {}).items()
        ]

    def _namespace_problems(self) -> list[str]:
        namespaces = {d.name for d in self.of_kind("Namespace")}
        return [
            f"{d!r} is in namespace {d.namespace!r}, which is not defined"
            for d in self.docs
            if d.kind not in CLUSTER_SCOPED and d.namespace not in namespaces
        ]

    def _selector_problems(self) -> list[str]:
        problems = []
        selectors = [(s, s.body["spec"].get("selector")) for s in self.of_kind("Service")]
        selectors += [
            (p, p.body["spec"]["podSelector"]["matchLabels"]) for p in self.of_kind("NetworkPolicy")
        ]
        selectors += [
            (p, p.body["spec"]["selector"]["matchLabels"])
            for p in self.of_kind("PodDisruptionBudget")
        ]
        for doc, selector in selectors:
            if not selector:
                continue  # a Service without selector is backed by hand-made endpoints
            matched = self._selected(doc, selector)
            if not matched:
                problems.append(f"{doc!r} selects {selector}, which no pod template has")
            if doc.kind == "Service":
                ports = [p.get("targetPort", p["port"]) for p in doc.body["spec"]["ports"]]
            elif doc.kind == "NetworkPolicy":
                rules = doc.body["spec"].get("ingress", [])
                ports = [p["port"] for r in rules for p in r.get("ports", [])]
            else:
                ports = []
            for port in ports:
                for owner, t in matched:
                    if not any(_declares(c, port) for c in t["spec"]["containers"]):
                        problems.append(f"{doc!r} uses port {port!r}, not declared by {owner!r}")
        for d in self.of_kind("Deployment") + self.of_kind("StatefulSet"):
            sel = d.body["spec"]["selector"]["matchLabels"]
            if not sel.items() <= d.body["spec"]["template"]["metadata"]["labels"].items():
                problems.append(f"{d!r} selector {sel} does not match its own pod labels")
        return problems

    def _container_problems(self) -> list[str]:
        problems = []
        sources = (("ConfigMap", "configMapRef"), ("Secret", "secretRef"))
        for owner, pod, c in self.containers():
            where = f"{owner!r} container {c['name']!r}"
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(kind) or {}
                action = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc")
                if action and not _declares(c, action["port"]):
                    problems.append(f"{where} {kind} uses port {action['port']!r}, not declared")
            missing = [
                (kind, src[key]["name"])
                for src in c.get("envFrom", [])
                for kind, key in sources
                if key in src and not self._defined(kind, src[key]["name"])
            ]
            problems += [f"{where} envFrom {k} {n!r} is not defined" for k, n in missing]
            for e in c.get("env", []):
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = e.get("valueFrom", {}).get(key)
                    if ref and ref["key"] not in (self.data_keys(kind, ref["name"]) or ()):
                        problems.append(
                            f"{where} env {e['name']} reads {kind} {ref['name']!r} "
                            f"key {ref['key']!r}, which is not defined"
                        )
            if not missing:
                known = self.container_env(c)
                for arg in c.get("command", []) + c.get("args", []):
                    problems += [
                        f"{where} expands $({var}), which it does not define"
                        for var in _ENV_REF.findall(str(arg))
                        if var not in known
                    ]
            volumes = {v["name"] for v in pod.get("volumes", [])}
            problems += [
                f"{where} mounts volume {m['name']!r}, not in the pod"
                for m in c.get("volumeMounts", [])
                if m["name"] not in volumes
            ]
        return problems

    def _pod_problems(self) -> list[str]:
        problems = []
        for owner, _, t in self.pod_templates():
            pod = t["spec"]
            sa = pod.get("serviceAccountName")
            if sa and not self._defined("ServiceAccount", sa):
                problems.append(f"{owner!r} uses ServiceAccount {sa!r}, which is not defined")
            for v in pod.get("volumes", []):
                needs = (
                    ("PersistentVolumeClaim", v.get("persistentVolumeClaim", {}).get("claimName")),
                    ("ConfigMap", v.get("configMap", {}).get("name")),
                    ("Secret", v.get("secret", {}).get("secretName")),
                )
                problems += [
                    f"{owner!r} volume {v['name']!r} needs {kind} {name!r}, which is not defined"
                    for kind, name in needs
                    if name and not self._defined(kind, name)
                ]
        return problems


def _declares(container: dict, port: str | int) -> bool:
    """Whether the container declares ``port``, by name or number."""
    return any(port in (p.get("name"), p["containerPort"]) for p in container.get("ports", []))


@pytest.fixture(scope="session")
def manifests() -> Manifests:
    return Manifests(load_docs())


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``builtin_doc``: one test per manifest document of a built-in Kubernetes kind."""
    if "builtin_doc" in metafunc.fixturenames:
        docs = [
            d
            for d in load_docs()
            if "/" not in d.body["apiVersion"]
            or d.body["apiVersion"].split("/")[0].endswith(".k8s.io")
            or d.body["apiVersion"].split("/")[0] in {"apps", "batch", "policy"}
        ]
        metafunc.parametrize("builtin_doc", docs, ids=repr)
