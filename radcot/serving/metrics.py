"""Prometheus metrics of the services (``prometheus-client``), in a registry of their own per app.

Under ``radcot serve --workers N`` every worker process writes its metrics into the directory named by
``PROMETHEUS_MULTIPROC_DIR`` (set by ``radcot serve`` before prometheus-client is imported) and ``/metrics``,
whichever worker answers it, reports the sum over the workers (prometheus-client's multiprocess mode;
``radcot_model_loaded`` then counts the workers that have loaded the student).
"""
from __future__ import annotations

import os
from typing import Iterable

#: set by ``radcot serve --workers N``: the directory where the worker processes' metrics are written
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Requests, latency, batch sizes, queue depth, cache hits and fallbacks of one service instance.

    Args:
        paths: the routes that get their own label; any other path counts as "other" (bounded label values).
    """

    def __init__(self, paths: Iterable[str]):
        import prometheus_client as pc

        self.paths = frozenset(paths)
        self._pc = pc
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = pc.CollectorRegistry()
        r = None if self.multiprocess else self.registry  # multiprocess: values live in files, summed at render
        self.requests = pc.Counter("radcot_requests", "HTTP requests by path and status", ["path", "status"], registry=r)
        self.latency = pc.Histogram("radcot_request_seconds", "request latency (seconds) by path", ["path"], registry=r,
                                    buckets=(.005, .01, .025, .05, .1, .15, .2, .22, .25, .3, .5, .75, 1, 2.5, 5, 10, 30))
        self.batch_size = pc.Histogram("radcot_batch_size", "inputs per generate call", registry=r,
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = pc.Histogram("radcot_batch_seconds", "seconds per generate call", registry=r,
                                          buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.queue_depth = pc.Gauge("radcot_queue_depth", "inputs waiting for a batch", registry=r,
                                    multiprocess_mode="livesum")
        self.cache_hits = pc.Counter("radcot_cache_hits", "queries answered from the expansion cache", registry=r)
        self.cache_misses = pc.Counter("radcot_cache_misses", "queries not in the expansion cache", registry=r)
        self.fallbacks = pc.Counter("radcot_fallbacks", "queries answered unexpanded, by reason (deadline: the "
                                    "student did not finish in time; overloaded: the queue was full; no_cot: a "
                                    "blank CoT)", ["reason"], registry=r)
        self.jobs = pc.Counter("radcot_jobs", "queued generation work by event (late: declared unable to meet its "
                               "deadline; background_done: finished after its requests fell back, filling the cache; "
                               "dropped_gone: its clients went away before it ran; dropped_background: the "
                               "background queue was full)", ["event"], registry=r)
        self.shared = pc.Counter("radcot_shared_generations", "queries that joined a generation already queued or "
                                 "running for the same query", registry=r)
        self.loaded = pc.Gauge("radcot_model_loaded", "1 once the model is loaded (the number of loaded workers)",
                               registry=r, multiprocess_mode="livesum")
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

    def fallback(self, reason: str, n: int = 1) -> None:
        if n:
            self.fallbacks.labels(reason).inc(n)

    def job_event(self, event: str, n: int = 1) -> None:
        self.jobs.labels(event).inc(n)

    def render(self) -> bytes:
        if not self.multiprocess:
            return self._pc.generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = self._pc.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return self._pc.generate_latest(registry)


def mark_process_dead(pid: int) -> None:
    """Forget a stopped worker's live gauges (multiprocess mode; a no-op otherwise)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


__all__ = ["MULTIPROC_ENV", "Metrics", "mark_process_dead"]
