"""Prometheus metrics of one server, in the text exposition format.

Each server has its own registry (several servers can run in one process, as
in the tests) and, when asked, its own HTTP endpoint on 127.0.0.1.
"""
from __future__ import annotations

import threading
from typing import Optional, Tuple

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Up to 10 s: a request can wait for a batch, a model load or a slow client.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """Requests by model, signature, method and status code; latency per
    model and signature; model calls and the sizes of batches."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mtrank_serving_requests", "Requests answered, by model, signature, method and code",
            ["model", "signature", "method", "code"], registry=self.registry)
        self.latency = Histogram(
            "mtrank_serving_request_latency_seconds", "Time to answer a request",
            ["model", "signature", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(
            "mtrank_serving_requests_in_flight", "Requests being answered now",
            registry=self.registry)
        self.model_calls = Counter(
            "mtrank_serving_model_calls", "Signature executions (one per batch)",
            registry=self.registry)
        self.batch_requests = Histogram(
            "mtrank_serving_batch_requests", "Requests merged into one model call",
            buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self.batch_examples = Histogram(
            "mtrank_serving_batch_examples", "Examples in one model call",
            buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self.versions_loaded = Gauge(
            "mtrank_serving_versions_available", "Versions serving traffic, by model",
            ["model"], registry=self.registry)
        self.load_failures = Counter(
            "mtrank_serving_version_load_failures", "Versions that failed to load or warm up",
            ["model"], registry=self.registry)
        self._http = None

    def record_batch(self, requests: int, examples: int) -> None:
        self.model_calls.inc()
        self.batch_requests.observe(requests)
        self.batch_examples.observe(examples)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)

    def start_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Serves the metrics over HTTP (any path); returns the bound port."""
        server, thread = prometheus_client.start_http_server(port, addr=host,
                                                             registry=self.registry)
        self._http: Optional[Tuple[object, threading.Thread]] = (server, thread)
        return server.server_address[1]

    def stop_http(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join()
            self._http = None
