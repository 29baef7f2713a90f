"""Prometheus metrics: request counts and latency per route, the adapter serving, judging
backlog. Counts only — no text, ids or user names leave through /metrics."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("carecycle_http_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("carecycle_http_request_seconds", "Time to the response's first byte",
                                 ["route", "method"], registry=self.registry)
        self.adapter = Gauge("carecycle_active_adapter_info", "The adapter new answers use (1 for the serving one)",
                             ["version"], registry=self.registry)

    def render(self, active_adapter: str | None) -> bytes:
        self.adapter.clear()
        self.adapter.labels(version=active_adapter or "base").set(1)
        return generate_latest(self.registry)


def _route_template(scope) -> str:
    """The matched route's path template, not the raw path: ids must not become label values.
    Starlette's router records the route in the scope once it has matched."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        method = scope["method"]

        async def timed_send(message):
            if message["type"] == "http.response.start":
                route = _route_template(scope)
                self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)
                self.metrics.requests.labels(route, method, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, timed_send)
