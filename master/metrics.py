"""The master's Prometheus metrics, one registry per app so tests can run several apps.

Request counts and latencies are plain counters on the hot path (a dict lookup and a few
integer adds per request); a collector turns them into Prometheus families at scrape time,
as it does the registry's own figures (services by status, the index), read when scraped
instead of set by the handler.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5
)  # fmt: skip
_LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)

Figures = Callable[[], Iterator[Any]]  # yields metric families when scraped


class _Latency:
    """One route's request latencies: bucket counts, their sum and count."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.total = 0.0


class _Requests(Collector):
    """Requests answered (by method, route, code) and their latency (by route)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, _Latency] = {}

    def collect(self) -> Iterator[Any]:
        counts = CounterMetricFamily(
            "picoapi_http_requests",
            "HTTP requests answered, by route and status code.",
            labels=["method", "route", "code"],
        )
        for (method, route, code), count in sorted(self.counts.items()):
            counts.add_metric([method, route, str(code)], count)
        yield counts
        latency = HistogramMetricFamily(
            "picoapi_http_request_seconds", "Time to answer an HTTP request.", labels=["route"]
        )
        for route, figures in sorted(self.latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), figures.buckets, strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            latency.add_metric([route], buckets, figures.total)
        yield latency


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


class _Figures(Collector):
    def __init__(self, figures: Figures) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Any]:
        yield from self._figures()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = _Requests()
        self.registry.register(self._requests)
        self.checks = Counter(
            "picoapi_checks", "Health checks run, by result.", ["status"], registry=self.registry
        )
        self.check_seconds = Histogram(
            "picoapi_check_seconds",
            "Duration of one health check.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.check_lag_seconds = Histogram(
            "picoapi_check_lag_seconds",
            "How late a check started after it was due.",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.checks_not_run = Counter(
            "picoapi_checks_not_run",
            "Checks not made for a local reason (no descriptor, no memory), by reason: "
            "they move no status.",
            ["reason"],
            registry=self.registry,
        )
        self.checks_in_flight = Gauge(
            "picoapi_checks_in_flight", "Health checks running now.", registry=self.registry
        )
        self.store_errors = Counter(
            "picoapi_store_errors", "Writes the store failed to commit.", registry=self.registry
        )

        self._routes: dict[Any, str] = {}  # resource -> its template, looked up once

    def add_figures(self, figures: Figures) -> None:
        """Families computed when scraped (the registry's counts, the checks in flight)."""
        self.registry.register(_Figures(figures))

    def observe_request(self, request: Any, code: int, seconds: float) -> None:
        """Count one answer under its route's template (`/v1/services/{id}`)."""
        resource = request.match_info.route.resource
        route = self._routes.get(resource)
        if route is None:
            route = self._routes[resource] = resource.canonical if resource else "unmatched"
        requests = self._requests
        key = (request.method, route, code)
        requests.counts[key] = requests.counts.get(key, 0) + 1
        latency = requests.latency.get(route)
        if latency is None:
            latency = requests.latency[route] = _Latency()
        latency.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.count += 1
        latency.total += seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
