"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process).

Under Ray Serve every replica keeps its own counters; ``/metrics`` answers
from the replica that took the scrape (Serve's own metrics cover the fleet).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets in seconds: fine below 10 ms, where the service is meant to live.
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """Request counts, latency histogram, fallbacks, reloads and the serving generation."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "recemb_requests", "HTTP requests by route and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "recemb_request_seconds", "Request latency (server side)", ["endpoint"], buckets=BUCKETS, registry=r
        )
        self.fallbacks = Counter(
            "recemb_fallbacks", "Answers from popularity only (unknown user and items)", ["endpoint"], registry=r
        )
        self.not_found = Counter(
            "recemb_unknown_ids", "Requests refused with 404 for unknown ids (fallback=404)", ["endpoint"], registry=r
        )
        self.tower_errors = Counter(
            "recemb_user_tower_errors", "User-tower encodes that failed (history query used)", registry=r
        )
        self.reloads = Counter("recemb_index_reloads", "Index reload attempts", ["result"], registry=r)
        self.generation = Gauge("recemb_index_generation", "Index generation being served", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): counts and times requests.

    Labels use the matched route's template (``/v1/similar/{item_id}``), never
    the raw path, so unknown ids cannot blow up the label set.
    """

    def __init__(self, app, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
