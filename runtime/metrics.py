"""Prometheus collectors with vLLM's metric names under a `cupyserve:` prefix.

Registered once per process in the default registry (the server exposes it at /metrics); the
engine updates them. Gauges are set from the engine thread after each step.
"""
from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                    5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                120.0, 240.0, 480.0)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        # (running, waiting, kv usage) as last set: engines skip the three sets when nothing moved.
        self.gauge_values: tuple | None = None
        p = "cupyserve:"
        self.num_requests_running = Gauge(p + "num_requests_running", "Sequences in the running batch",
                                          registry=registry)
        self.num_requests_waiting = Gauge(p + "num_requests_waiting", "Sequences waiting for admission",
                                          registry=registry)
        self.kv_cache_usage_perc = Gauge(p + "kv_cache_usage_perc", "Fraction of KV blocks in use (0-1)",
                                         registry=registry)
        self.prefix_cache_queries = Counter(p + "prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                            registry=registry)
        self.prefix_cache_hits = Counter(p + "prefix_cache_hits", "Prompt tokens served from the prefix cache",
                                         registry=registry)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prefill tokens processed", registry=registry)
        self.generation_tokens = Counter(p + "generation_tokens", "Tokens generated", registry=registry)
        self.request_success = Counter(p + "request_success", "Finished requests by finish reason",
                                       ["finished_reason"], registry=registry)
        self.num_preemptions = Counter(p + "num_preemptions", "Sequences preempted for KV space",
                                       registry=registry)
        self.oom_recoveries = Counter(p + "oom_recoveries", "Steps failed by device OOM and recovered",
                                      registry=registry)
        self.time_to_first_token = Histogram(p + "time_to_first_token_seconds", "Time to first token",
                                             buckets=_LATENCY_BUCKETS, registry=registry)
        self.inter_token_latency = Histogram(p + "inter_token_latency_seconds", "Time between output tokens",
                                             buckets=_LATENCY_BUCKETS, registry=registry)
        self.e2e_request_latency = Histogram(p + "e2e_request_latency_seconds", "Request latency, arrival to finish",
                                             buckets=_E2E_BUCKETS, registry=registry)
        self.request_queue_time = Histogram(p + "request_queue_time_seconds", "Time waiting before first scheduled",
                                            buckets=_E2E_BUCKETS, registry=registry)
        self.model_info = Gauge(p + "model_info", "Model and device served (value 1)",
                                ["model", "family", "quant_kind", "device"], registry=registry)


_instance: EngineMetrics | None = None


def engine_metrics() -> EngineMetrics:
    """The process-wide collectors (prometheus_client forbids registering a name twice)."""
    global _instance
    if _instance is None:
        _instance = EngineMetrics()
    return _instance
