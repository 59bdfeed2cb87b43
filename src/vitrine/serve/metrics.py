"""Prometheus metrics: request counts and latencies per route, and seconds per search stage.

Each app has its own registry (no process-global state), exposed at ``/metrics``.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Fine buckets at the low end: a text search is ~15 ms, a photo search ~40 ms on two cores.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
           2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vitrine_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("vitrine_request_seconds", "Time to answer a request", ["method", "route"],
                                 buckets=BUCKETS, registry=self.registry)
        self.stages = Histogram("vitrine_stage_seconds",
                                "Seconds per search stage (queue, decode, encode, retrieve, fetch, rerank) and write stage",
                                ["stage"], buckets=BUCKETS, registry=self.registry)
        self.products = Gauge("vitrine_products", "Products in the catalog", registry=self.registry)
        self.indexed = Gauge("vitrine_indexed", "Vectors in the index", registry=self.registry)

    def observe_stages(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            if stage != "total":
                self.stages.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware counting requests by route template (not raw path: ids must not become labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or _static_route(scope["path"])
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)


def _static_route(path: str) -> str:
    for prefix in ("/images/", "/static/"):
        if path.startswith(prefix):
            return prefix + "*"
    return "other"
