"""The master's Prometheus metrics, one registry per app so tests can run several apps."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "picoapi_http_requests",
            "HTTP requests answered, by route and status code.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "picoapi_http_request_seconds",
            "Time to answer an HTTP request.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.services = Gauge(
            "picoapi_services",
            "Registered services by status.",
            ["status"],
            registry=self.registry,
        )
        self.registry_index = Gauge(
            "picoapi_registry_index", "The registry's change index.", registry=self.registry
        )
        self.checks = Counter(
            "picoapi_checks", "Health checks run, by result.", ["status"], registry=self.registry
        )
        self.check_seconds = Histogram(
            "picoapi_check_seconds",
            "Duration of one health check.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.check_lag_seconds = Histogram(
            "picoapi_check_lag_seconds",
            "How late a check started after it was due.",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.checks_in_flight = Gauge(
            "picoapi_checks_in_flight", "Health checks running now.", registry=self.registry
        )
        self.store_errors = Counter(
            "picoapi_store_errors", "Writes the store failed to commit.", registry=self.registry
        )

        # (method, route, code) -> the two labelled children, looked up once: labels() takes
        # a lock and checks its arguments on every call, a cost paid on every request.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, code: int, seconds: float) -> None:
        key = (method, route, code)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.request_seconds.labels(route),
                self.requests.labels(method, route, str(code)),
            )
        children[0].observe(seconds)
        children[1].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
