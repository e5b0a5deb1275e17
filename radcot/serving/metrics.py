"""Prometheus metrics of the service (``prometheus-client``), in a registry of their own per app."""
from __future__ import annotations

from typing import Iterable


class Metrics:
    """Requests, latency, batch sizes, queue depth and cache hits of one service instance.

    Args:
        paths: the routes that get their own label; any other path counts as "other" (bounded label values).
    """

    def __init__(self, paths: Iterable[str]):
        import prometheus_client as pc

        self.paths = frozenset(paths)

        self._pc = pc
        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.requests = pc.Counter("radcot_requests", "HTTP requests by path and status", ["path", "status"], registry=r)
        self.latency = pc.Histogram("radcot_request_seconds", "request latency (seconds) by path", ["path"], registry=r,
                                    buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = pc.Histogram("radcot_batch_size", "inputs per generate call", registry=r,
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = pc.Histogram("radcot_batch_seconds", "seconds per generate call", registry=r,
                                          buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.queue_depth = pc.Gauge("radcot_queue_depth", "inputs waiting for a batch", registry=r)
        self.cache_hits = pc.Counter("radcot_cache_hits", "queries answered from the LRU cache", registry=r)
        self.cache_misses = pc.Counter("radcot_cache_misses", "queries not in the LRU cache", registry=r)
        self.loaded = pc.Gauge("radcot_model_loaded", "1 once the model is loaded", registry=r)
        self.content_type = pc.CONTENT_TYPE_LATEST

    def request(self, path: str, status: int, seconds: float) -> None:
        path = path if path in self.paths else "other"
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def cache(self, hits: int, misses: int) -> None:
        if hits:
            self.cache_hits.inc(hits)
        if misses:
            self.cache_misses.inc(misses)

    def render(self) -> bytes:
        return self._pc.generate_latest(self.registry)


__all__ = ["Metrics"]
