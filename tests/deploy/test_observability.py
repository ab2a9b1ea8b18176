"""Contract: the Grafana dashboard and Prometheus config in deploy/observability match the code.

Every metric a dashboard query (panel target or template variable) names is one that the
gateway or the engine REALLY exports: both apps are built in-process, given a little
traffic, and their ``/metrics`` text is scraped and parsed; nothing is hard-coded. A series
name is valid when it is one the Prometheus client writes for an exported family (a counter
``x`` as ``x_total``, a histogram as ``x_bucket`` / ``x_sum`` / ``x_count``, a gauge as
itself). The checker is itself tested on a copy of the dashboard with a wrong name. The
dashboard is valid Grafana JSON (uid, title, panels with targets, the ``DS_PROMETHEUS``
datasource variable), and the scrape config matches the pods' annotations in deploy/k8s and
the supervisor's ``stack.json``.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serving.engine.app import create_app as create_engine_app
from serving.engine.protocol import ChoiceDelta, EngineLoad, SamplingParams, Usage
from serving.gateway.app import GatewayConfig
from serving.gateway.app import create_app as create_gateway_app

REPO = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPO / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


class TinyEngine:
    """Just enough of the engine protocol to produce every engine metric."""

    served_model_name = "tiny"

    def ready(self) -> bool:
        return True

    def load(self) -> EngineLoad:
        return EngineLoad(running=1, waiting=0)

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncIterator:
        yield ChoiceDelta(0, "ok", "stop")
        yield Usage(prompt_tokens=len(prompt.split()), completion_tokens=1)


def exported_series(metrics_text: str) -> set[str]:
    """Every series name the exposition declares, including those with no sample yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        names |= {family.name + s for s in _SUFFIXES.get(family.type, ("",))}
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels, keywords left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range / subquery durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group(0) in _KEYWORDS:
            continue  # a function or aggregation call, or an operator keyword
        names.add(m.group(0))
    return names


def dashboard_queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query template variable."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*[a-zA-Z_]\w*\)", query.strip())
            yield f"variable {var['name']!r}", m.group(1) if m else query


def unknown_metrics(dashboard: dict, exported: set[str]) -> list[str]:
    """Each query that names a metric nobody exports, as a readable sentence."""
    problems = []
    for where, expr in dashboard_queries(dashboard):
        names = promql_metric_names(expr)
        if not names:
            problems.append(f"{where}: selects no metric: {expr}")
        problems += [f"{where}: {n} is not exported" for n in sorted(names - exported)]
    return problems


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    engine = TestClient(create_engine_app(TinyEngine()))
    r = engine.post("/v1/completions", json={"model": "tiny", "prompt": "Q: one A:"})
    assert r.status_code == 200, r.text
    engine_text = engine.get("/metrics").text

    state = tmp_path_factory.mktemp("gateway") / "state.json"
    gateway = TestClient(create_gateway_app(GatewayConfig(state_path=state, admin_token="t")))
    admin = {"Authorization": "Bearer t"}
    for name in ("stable", "canary"):
        body = {"url": f"http://127.0.0.1:9/{name}", "model": "tiny"}
        assert gateway.put(f"/admin/backends/{name}", json=body, headers=admin).is_success
    route = {"stable": "stable", "canary": "canary", "canary_weight": 10}
    assert gateway.put("/admin/routes/sovereign-lm", json=route, headers=admin).is_success
    gateway_text = gateway.get("/metrics").text
    assert 'gateway_breaker_state{backend="canary"}' in gateway_text  # the scrape is live
    assert "vllm:generation_tokens_total" in engine_text
    return exported_series(engine_text) | exported_series(gateway_text)


def test_every_dashboard_metric_is_exported(dashboard, exported):
    assert not unknown_metrics(dashboard, exported)


def test_the_checker_catches_a_wrong_metric_name(dashboard, exported):
    broken = copy.deepcopy(dashboard)
    target = next(p for p in broken["panels"] if p.get("targets"))["targets"][0]
    target["expr"] = target["expr"].replace(
        "gateway_backend_requests_total", "gateway_backend_request_total"
    )
    assert unknown_metrics(broken, exported) == [
        f"panel {next(p for p in broken['panels'] if p.get('targets'))['title']!r} target A: "
        "gateway_backend_request_total is not exported"
    ]
    # A gauge read as if it were a counter is wrong too.
    target["expr"] = "rate(vllm:num_requests_running_total[5m])"
    assert len(unknown_metrics(broken, exported)) == 1


def test_promql_parser_finds_only_metric_names():
    expr = (
        "histogram_quantile(0.95, sum by (le, route) (rate(gateway_backend_latency_seconds_bucket"
        '{route=~"$route", code!="5.."}[$__rate_interval]))) / on(route) group_left '
        "sum(vllm:num_requests_running) by (model_name) > bool 1e3"
    )
    assert promql_metric_names(expr) == {
        "gateway_backend_latency_seconds_bucket",
        "vllm:num_requests_running",
    }


def test_dashboard_is_valid_grafana_json(dashboard):
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        assert panel["title"] and panel["targets"], panel.get("title")
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}" and target["expr"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0


def test_dashboard_covers_the_serving_signals(dashboard):
    exprs = " ".join(expr for _, expr in dashboard_queries(dashboard))
    for needle in (
        "gateway_backend_requests_total",
        "gateway_backend_errors_total",
        "histogram_quantile(0.99, sum by (le, route, backend) "
        "(rate(gateway_backend_latency_seconds_bucket",
        "gateway_retries_total",
        "gateway_breaker_state",
        "gateway_route_canary_weight",
        "rate(vllm:e2e_request_latency_seconds_bucket",
        "rate(vllm:time_to_first_token_seconds_bucket",
        "rate(vllm:prompt_tokens_total",
        "rate(vllm:generation_tokens_total",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
    ):
        assert needle in exprs, needle


def test_scrape_annotations_match_the_k8s_pods(manifests):
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    pods = jobs["kubernetes-pods"]
    assert pods["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["sovereign-mlops"]
    keep = pods["relabel_configs"][0]
    assert keep["action"] == "keep" and keep["regex"] == "true"
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    scraped = []
    for owner, _, template in manifests.pod_templates():
        notes = template["metadata"].get("annotations", {})
        if notes.get("prometheus.io/scrape") != "true":
            continue
        scraped.append(owner.name)
        assert notes["prometheus.io/path"] == "/metrics", owner
        ports = {p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]}
        assert int(notes["prometheus.io/port"]) in ports, owner
    assert "gateway" in scraped and any(name.startswith("vllm") for name in scraped)


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_local_targets_come_from_stack_json(tmp_path):
    stack = {
        "supervisor_pid": 1,
        "gateway": {"url": "http://127.0.0.1:41001", "pid": 2, "host": "127.0.0.1", "port": 41001},
        "engines": {"m-1": {"url": "http://127.0.0.1:41002", "pid": 3, "port": 41002}},
    }
    (tmp_path / "stack.json").write_text(json.dumps(stack))
    out = subprocess.run(
        ["jq", "-f", str(OBSERVABILITY / "stack-targets.jq"), str(tmp_path / "stack.json")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(out.stdout) == [
        {"targets": ["127.0.0.1:41001"], "labels": {"component": "gateway"}},
        {"targets": ["127.0.0.1:41002"], "labels": {"component": "engine", "engine": "m-1"}},
    ]
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    local = next(j for j in config["scrape_configs"] if j["job_name"] == "local-stack")
    assert local["file_sd_configs"][0]["files"] == ["targets/*.json"]
