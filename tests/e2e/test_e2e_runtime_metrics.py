"""/metrics parsed with Prometheus' own text parser: vLLM's names under `cupyserve:`, right
types, and the counters and histograms move when a request runs."""
from __future__ import annotations

import pytest

from runtime_support import assert_healthy_and_idle, metric_samples
from testdata import backend_under_test

pytestmark = pytest.mark.e2e

EXPECTED_TYPES = {
    "num_requests_running": "gauge",
    "num_requests_waiting": "gauge",
    "kv_cache_usage_perc": "gauge",
    "prefix_cache_queries": "counter",
    "prefix_cache_hits": "counter",
    "prompt_tokens": "counter",
    "generation_tokens": "counter",
    "request_success": "counter",
    "num_preemptions": "counter",
    "oom_recoveries": "counter",
    "time_to_first_token_seconds": "histogram",
    "inter_token_latency_seconds": "histogram",
    "e2e_request_latency_seconds": "histogram",
    "request_queue_time_seconds": "histogram",
    "model_info": "gauge",
}


def sample(families: dict, name: str, **labels: str) -> float:
    for family in families.values():
        for s in family["samples"]:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_every_issue_metric_is_exposed_with_its_type_and_moves(runtime_server, runtime_http):
    http = runtime_http
    before = metric_samples(http)
    for name, kind in EXPECTED_TYPES.items():
        family = before.get(f"cupyserve:{name}")
        assert family is not None, f"cupyserve:{name} missing"
        assert family["type"] == kind, f"cupyserve:{name} is a {family['type']}, not a {kind}"
    info = [s for s in before["cupyserve:model_info"]["samples"]]
    assert len(info) == 1 and info[0].value == 1
    assert info[0].labels["device"] == backend_under_test() and info[0].labels["family"] == "llama"
    assert 0.0 <= sample(before, "cupyserve:kv_cache_usage_perc") <= 1.0

    response = http.post("/v1/completions", json={"prompt": "Count: one, two, three,", "max_tokens": 5,
                                                  "ignore_eos": True, "temperature": 0})
    assert response.status_code == 200
    prompt_tokens = response.json()["usage"]["prompt_tokens"]
    after = metric_samples(http)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("cupyserve:prompt_tokens_total") == prompt_tokens
    assert delta("cupyserve:generation_tokens_total") == 5
    assert delta("cupyserve:request_success_total", finished_reason="length") == 1
    assert delta("cupyserve:prefix_cache_queries_total") == prompt_tokens
    assert delta("cupyserve:time_to_first_token_seconds_count") == 1
    assert delta("cupyserve:inter_token_latency_seconds_count") == 4
    assert delta("cupyserve:e2e_request_latency_seconds_count") == 1
    assert delta("cupyserve:request_queue_time_seconds_count") == 1
    assert delta("cupyserve:e2e_request_latency_seconds_sum") > 0
    assert sample(after, "cupyserve:num_requests_running") == 0
    assert sample(after, "cupyserve:num_requests_waiting") == 0
    assert_healthy_and_idle(runtime_server, http)
