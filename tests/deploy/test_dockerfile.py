"""Contract: the Dockerfile builds the image the manifests and the Dagster chart expect.

No Docker engine runs here, so the Dockerfile is parsed (dockerfile-parse) and checked:
python:3.11-slim base; torch installed pinned (same version as scripts/bootstrap.sh) from
the chosen wheel index before the project; a numeric non-root user equal to the pods'
runAsUser; an entrypoint with no command of its own (the chart and the run launcher pass
the whole command as ``args``) and ``dagster api grpc -m <workspace module>`` as the
default command on the chart's port; MLOPS_HOME as in the cluster ConfigMap; and a
.dockerignore that keeps local state out without hiding what the build copies.
"""

from __future__ import annotations

import fnmatch
import re
from importlib.metadata import version

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement


@pytest.fixture(scope="module")
def dockerfile(repo):
    parser = DockerfileParser(str(repo / "Dockerfile"))
    args = {}
    stages: list[list[dict]] = []
    for instr in parser.structure:
        if instr["instruction"] == "ARG" and "=" in instr["value"]:
            name, default = instr["value"].split("=", 1)
            args.setdefault(name, default)
        if instr["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instr)
    return parser, args, stages


def _expand(text, args):
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def _values(stage, instruction):
    return [i["value"] for i in stage if i["instruction"] == instruction]


def test_every_stage_is_python_311_slim(dockerfile):
    _, args, stages = dockerfile
    for stage in stages:
        base = _expand(stage[0]["value"].split()[0], args)
        assert base == "python:3.11-slim"


def test_torch_is_pinned_and_installed_before_the_project(dockerfile, repo):
    _, args, stages = dockerfile
    runs = [_expand(v, args) for v in _values(stages[0], "RUN")]
    torch_at = next(i for i, r in enumerate(runs) if "torch==" in r)
    project_at = next(i for i, r in enumerate(runs) if "pip install /src" in r)
    assert torch_at < project_at
    bootstrap = (repo / "scripts/bootstrap.sh").read_text()
    pinned = re.search(r"TORCH_VERSION:-([0-9.]+)", bootstrap).group(1)
    assert f"torch=={pinned}" in runs[torch_at]
    assert "download.pytorch.org/whl/cpu" in runs[torch_at], "CPU is the default variant"


def test_cluster_only_pins_fit_the_installed_stack(dockerfile):
    _, args, stages = dockerfile
    install = next(v for v in _values(stages[0], "RUN") if "pip install /src" in v)
    pins = {r.name: r for r in map(Requirement, re.findall(r'"([^"]+)"', install))}
    assert version("dagster-k8s") in pins["dagster-k8s"].specifier
    # Integration libraries ship with the core release of the same patch number
    # (dagster 1.13.27 <-> dagster-k8s 0.29.27).
    assert version("dagster-k8s").split(".")[2] == version("dagster").split(".")[2]
    assert "boto3" in pins


def test_runs_as_the_pods_non_root_user(dockerfile, manifests, repo):
    _, _, stages = dockerfile
    user = _values(stages[-1], "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0
    for owner, _, template in manifests.pod_templates():
        assert template["spec"]["securityContext"]["runAsUser"] == int(uid), f"{owner!r}"
        assert template["spec"]["securityContext"]["runAsGroup"] == int(gid), f"{owner!r}"
    values = yaml.safe_load((repo / "deploy/helm/dagster-values.yaml").read_text())
    (location,) = values["dagster-user-deployments"]["deployments"]
    assert location["podSecurityContext"]["runAsUser"] == int(uid)


def test_entrypoint_leaves_the_command_to_kubernetes(dockerfile, repo):
    final = dockerfile[2][-1]
    # Exec-form JSON arrays are valid YAML flow sequences.
    entrypoint = yaml.safe_load(_values(final, "ENTRYPOINT")[-1])
    assert "dagster" not in entrypoint
    cmd = yaml.safe_load(_values(final, "CMD")[-1])
    workspace = yaml.safe_load((repo / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    assert cmd[:5] == ["dagster", "api", "grpc", "-m", module]
    values = yaml.safe_load((repo / "deploy/helm/dagster-values.yaml").read_text())
    (location,) = values["dagster-user-deployments"]["deployments"]
    assert cmd[cmd.index("--port") + 1] == str(location["port"])


def test_environment_matches_the_cluster_config(dockerfile, manifests):
    _, _, stages = dockerfile
    env = " ".join(_values(stages[-1], "ENV"))
    home = manifests.get("ConfigMap", "mlops-config").body["data"]["MLOPS_HOME"]
    assert f"MLOPS_HOME={home}" in env
    assert "HF_HUB_OFFLINE=1" in env


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatch(path, p)
        or fnmatch.fnmatch(path, p.removeprefix("**/"))
        or path.startswith(p.rstrip("/") + "/")
        for p in patterns
    )


def test_dockerignore_keeps_state_out_and_sources_in(repo, dockerfile):
    patterns = [
        line.strip()
        for line in (repo / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for state in (
        ".mlops",
        ".venv",
        ".git",
        "test-artifacts",
        ".pytest_cache",
        "mlruns",
        "orchestration/__pycache__/x.pyc",
        "model/model.safetensors",
    ):
        assert _ignored(state, patterns), state
    for needed in (
        "pyproject.toml",
        "README.md",
        "orchestration/definitions.py",
        "training/__main__.py",
        "serving/__init__.py",
        "ingestion/records.py",
    ):
        assert not _ignored(needed, patterns), needed
        assert (repo / needed).exists(), needed
