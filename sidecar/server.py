"""The sidecar's own HTTP surface: /health, /openapi.json, /status, /metrics, /drain."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from master.model import Status, dumps_compact, format_time, to_builtins
from sidecar.checks import SharedCheck
from sidecar.config import Config, registration_json
from sidecar.sync import SyncLoop, SyncMetrics, SyncState
from sidecar.watch import ConfigWatcher

HEALTH_CODES: Final = {
    Status.PASSING: 200,
    Status.WARNING: 429,
    Status.CRITICAL: 503,
    Status.UNKNOWN: 503,
}


class SidecarMetrics:
    """Counters and histograms updated where things happen; figures of state (registered
    or not) are read by a collector when scraped, never set by the /metrics handler."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.checks = Counter(
            "picoapi_sidecar_checks", "Checks run, by result.", ["status"], registry=self.registry
        )
        self.check_seconds = Histogram(
            "picoapi_sidecar_check_seconds",
            "Duration of one check of the service.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.sync = SyncMetrics(self.registry)
        ProcessCollector(registry=self.registry)  # the sidecar's own RSS, CPU and fds


class _SyncFigures(Collector):
    """The sync loop's state, as gauges, read at scrape time."""

    def __init__(self, state: SyncState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._state
        yield GaugeMetricFamily(
            "picoapi_sidecar_registered",
            "1 while the master holds the registration.",
            value=1 if state.registered else 0,
        )
        yield GaugeMetricFamily(
            "picoapi_sidecar_sync_consecutive_failures",
            "Failed syncs with the master since the last one that worked.",
            value=state.failures,
        )
        if state.last_sync_at is not None:
            yield GaugeMetricFamily(
                "picoapi_sidecar_last_sync_timestamp_seconds",
                "When a master last accepted the registration (Unix time).",
                value=state.last_sync_at,
            )


class Sidecar:
    """The parts the HTTP handlers read: held together so each handler gets them in one."""

    def __init__(
        self,
        config_path: str,
        sync: SyncLoop,
        check: SharedCheck,
        watcher: ConfigWatcher,
        metrics: SidecarMetrics,
    ) -> None:
        self.config_path = config_path
        self.sync = sync
        self.check = check
        self.watcher = watcher
        self.metrics = metrics
        metrics.registry.register(_SyncFigures(sync.state))
        self.started_at = time.time()

    @property
    def config(self) -> Config:
        return self.sync.desired.config


SIDECAR: Final = web.AppKey("sidecar", Sidecar)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps_compact(body), status=status, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    result = await sidecar.check.run()
    sidecar.metrics.checks.labels(result.status.value).inc()
    sidecar.metrics.check_seconds.observe(result.duration_ms / 1000)
    body: dict[str, Any] = {
        "status": result.status.value,
        "check": sidecar.check.kind,
        "output": result.output,
        "duration_ms": round(result.duration_ms, 3),
    }
    if result.http_status is not None:
        body["http_status"] = result.http_status
    process = sidecar.check.process
    if process is not None:
        body["process"] = process
    return _json(body, HEALTH_CODES[result.status])


async def openapi(request: web.Request) -> web.Response:
    document = request.app[SIDECAR].sync.desired.document
    if document is None:
        return _json(
            {
                "error": {
                    "code": "not_found",
                    "message": "no OpenAPI document fetched from the service",
                }
            },
            404,
        )
    return web.Response(body=document.body, content_type="application/json")


async def status(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    state = sidecar.sync.state
    document = sidecar.sync.desired.document
    last = sidecar.check.last
    return _json(
        {
            "config_path": sidecar.config_path,
            "registration": registration_json(sidecar.config, None),
            "registered": state.registered,
            "drained": state.drained,
            "master_url": state.master_url,
            "last_sync": format_time(state.last_sync_at) if state.last_sync_at else None,
            "syncs": state.syncs,
            "failures": state.failures,
            "last_error": state.last_error,
            "last_error_at": format_time(state.last_error_at) if state.last_error_at else None,
            "config_error": sidecar.watcher.last_error,
            "openapi_sha256": document.sha256 if document else None,
            "openapi_error": state.openapi_error,
            "last_check": to_builtins(last) if last else None,
            "started_at": format_time(sidecar.started_at),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[SIDECAR].metrics.registry
    return web.Response(body=generate_latest(registry), content_type="text/plain", charset="utf-8")


async def drain(request: web.Request) -> web.Response:
    sync = request.app[SIDECAR].sync
    service_id = sync.desired.config.service.id
    if await sync.drain():
        return _json({"drained": True, "service_id": service_id})
    return _json(
        {
            "drained": False,
            "service_id": service_id,
            "error": {"code": "master_unreachable", "message": sync.state.last_error},
        },
        503,
    )


def build_server(sidecar: Sidecar) -> web.Application:
    app = web.Application()
    app[SIDECAR] = sidecar
    app.router.add_get("/health", health)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("GET", "/drain", drain)
    app.router.add_route("POST", "/drain", drain)
    return app
