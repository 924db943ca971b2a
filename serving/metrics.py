"""Prometheus metrics of one server, in the text exposition format.

Each server has its own registry (several servers can run in one process, as
in the tests) and, when asked, its own HTTP endpoint on 127.0.0.1.

The workers of `mtrank serve --workers N` (serving/workers.py) keep theirs in
a directory they share, with prometheus_client's multiprocess mode, and every
exposition sums the workers': counters and histograms over all workers that
ran, requests in flight over the live ones, versions available the highest
of the live ones.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

# Up to 10 s: a request can wait for a batch, a model load or a slow client.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """Requests by model, signature, method and status code; latency per
    model and signature; model calls and the sizes of batches."""

    def __init__(self, shared_dir: Optional[str] = None):
        """`shared_dir`: the multiprocess directory of the workers of one
        server (prometheus_client must have been imported with
        PROMETHEUS_MULTIPROC_DIR naming it), or None for this process alone."""
        self.shared_dir = shared_dir
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mtrank_serving_requests", "Requests answered, by model, signature, method and code",
            ["model", "signature", "method", "code"], registry=self.registry)
        self.latency = Histogram(
            "mtrank_serving_request_latency_seconds", "Time to answer a request",
            ["model", "signature", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(
            "mtrank_serving_requests_in_flight", "Requests being answered now",
            registry=self.registry, multiprocess_mode="livesum")
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
            ["model"], registry=self.registry, multiprocess_mode="livemax")
        self.load_failures = Counter(
            "mtrank_serving_version_load_failures", "Versions that failed to load or warm up",
            ["model"], registry=self.registry)
        # What expositions show: this registry, or the sum over the workers.
        self.exposed_registry = (self.registry if shared_dir is None
                                 else shared_registry(shared_dir))
        self._http: Optional[MetricsHttp] = None
        # Label children by label values: labels() takes a lock and checks its
        # arguments on every call, at every request.
        self._request_children: Dict[tuple, Tuple[object, object]] = {}

    def record_request(self, model: str, signature: str, method: str, code: str,
                       seconds: float) -> None:
        """Counts one answered request and observes its latency."""
        children = self._request_children.get((model, signature, method, code))
        if children is None:
            children = (self.requests.labels(model, signature, method, code),
                        self.latency.labels(model, signature, method))
            self._request_children[(model, signature, method, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    def record_batch(self, requests: int, examples: int) -> None:
        self.model_calls.inc()
        self.batch_requests.observe(requests)
        self.batch_examples.observe(examples)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.exposed_registry)

    def start_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Serves the metrics over HTTP (any path); returns the bound port."""
        self._http = MetricsHttp(self.exposed_registry, port, host)
        return self._http.port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None


class MetricsHttp:
    """`registry` over HTTP on host:port (any path; port 0: a free one,
    then `port` says which) until `stop()`."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "127.0.0.1"):
        self._server, self._thread = prometheus_client.start_http_server(
            port, addr=host, registry=registry)
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def shared_registry(shared_dir: str) -> CollectorRegistry:
    """A registry whose exposition sums the metrics of the processes writing
    to `shared_dir` (read at each collection)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=shared_dir)
    return registry


def mark_process_dead(shared_dir: str, pid: int) -> None:
    """Drops a process that ended from the live gauges of `shared_dir`."""
    multiprocess.mark_process_dead(pid, shared_dir)
