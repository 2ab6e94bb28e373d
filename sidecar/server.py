"""The sidecar's own HTTP surface: /health, /openapi.json, /status, /metrics, /drain, and
the master's read questions, answered from the discovery cache (sidecar.discovery).

Reads are open; but a sidecar that reads the master with a token (`master.token`) answers
discovery questions from loopback callers only: it lends its credentials to the service
beside it, not to whoever reaches its port. A route that changes state (any method but GET
and HEAD: POST /drain) is guarded: with `sidecar.token_file`, every caller needs one of
its tokens as a bearer token, loopback callers too (a token means "only with the token":
every container of a pod and every local user or process shares loopback, and the service
beside the sidecar may be talked into requesting a loopback URL); without one, only
loopback callers may. Every error answer is `{"error": {"code", "message"}}`, rendered by
one middleware.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from typing import Any, Final

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from master.model import Status, dumps_compact, format_time, to_builtins
from master.shared.serving import refuse_other_methods, request_done
from master.shared.tokens import TokenFile, TokenFileError
from sidecar.checks import SharedCheck
from sidecar.config import Config, registration_json
from sidecar.discovery import ROUTES, Discovery, DiscoveryError
from sidecar.sync import SyncLoop, SyncMetrics, SyncState
from sidecar.watch import ConfigWatcher

log = structlog.get_logger("sidecar.server")

HEALTH_CODES: Final = {
    Status.PASSING: 200,
    Status.WARNING: 429,
    Status.CRITICAL: 503,
    Status.UNKNOWN: 503,
}
READS: Final = frozenset({"GET", "HEAD"})
# The master's checker names itself so (master.health.USER_AGENT): only its requests tell
# that the master still checks this sidecar; a kubelet's readiness probe of /health does not.
MASTER_CHECK_AGENT: Final = "picoapi-master"
# No check from the master for this many check intervals: it has stopped checking.
CHECK_SILENCE_INTERVALS: Final = 3
_ERROR_CODES: Final = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
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


class _DiscoveryFigures(Collector):
    """The discovery cache's figures and counts, read at scrape time."""

    def __init__(self, discovery: Discovery) -> None:
        self._discovery = discovery

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        discovery = self._discovery
        prefix = "picoapi_sidecar_discovery_"
        yield GaugeMetricFamily(
            prefix + "questions", "Questions cached and watched.", value=discovery.questions
        )
        yield GaugeMetricFamily(
            prefix + "cached_bytes", "Bytes of cached answers.", value=discovery.cached_bytes
        )
        yield GaugeMetricFamily(
            prefix + "waiting",
            "Discovery requests held now (blocking queries, first fetches, pass-throughs).",
            value=discovery.waiting,
        )
        answers = CounterMetricFamily(
            prefix + "answers",
            "Discovery answers, by how: hit (cache), miss (fetched), pass (not cached), "
            "unavailable, busy.",
            labels=["how"],
        )
        for how, count in self._discovery.answers.items():
            answers.add_metric([how], count)
        yield answers
        dropped = CounterMetricFamily(
            prefix + "questions_dropped", "Questions no longer watched, by why.", labels=["reason"]
        )
        for reason, count in self._discovery.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily(
            prefix + "questions_started",
            "Questions that got a watcher.",
            value=self._discovery.started,
        )
        yield CounterMetricFamily(
            prefix + "master_queries",
            "Queries the watchers sent to the master.",
            value=self._discovery.master_queries,
        )
        yield CounterMetricFamily(
            prefix + "master_failures",
            "Watcher queries no master answered.",
            value=self._discovery.master_failures,
        )


class Guard:
    """Who may change the sidecar's state: with a token file, callers with one of its
    tokens (re-read as the file changes); without, loopback callers."""

    def __init__(self, token_file: str | None) -> None:
        self.token_file = token_file
        self._tokens = TokenFile(token_file) if token_file else None

    def update(self, token_file: str | None) -> None:
        """A reload named another file (or none); a file that cannot be read keeps the
        tokens in force (the reload read it a moment ago: a race, or a rotation midway)."""
        if token_file == self.token_file:
            return
        try:
            tokens = TokenFile(token_file) if token_file else None
        except TokenFileError as exc:
            log.warning("token_file_rejected", path=token_file, reason=str(exc))
            return
        self.token_file, self._tokens = token_file, tokens

    def refusal(self, request: web.Request) -> web.Response | None:
        """The answer to a caller that may not change state; None if it may."""
        if self._tokens is None:
            if _is_loopback(request.remote):
                return None
            return _error(
                403,
                f"only loopback callers may {request.method} {request.path} (give the "
                "sidecar a sidecar.token_file to let others in with a token)",
            )
        if self._tokens.accepts(_bearer(request.headers.get("Authorization")) or ""):
            return None
        answer = _error(401, "a valid 'Authorization: Bearer <token>' header is required")
        answer.headers["WWW-Authenticate"] = 'Bearer realm="picoapi-sidecar"'
        return answer


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _bearer(header: str | None) -> str | None:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class MasterChecks:
    """When the master last checked this sidecar's /health, and since when it has kept
    doing so: a gap of CHECK_SILENCE_INTERVALS check intervals means it stopped."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.last_at: float | None = None
        self.streak_since: float | None = None

    def seen(self, now: float, interval: float) -> None:
        if self.last_at is None or now - self.last_at > CHECK_SILENCE_INTERVALS * interval:
            self.streak_since = now
        self.last_at = now

    def view(self, now: float, interval: float) -> tuple[bool | None, float | None]:
        """Whether the master is checking, and since when that is so; (None, None) while
        none came yet and it is too early to say."""
        silence = CHECK_SILENCE_INTERVALS * interval
        last = self.last_at if self.last_at is not None else self.started_at
        if now - last > silence:
            return False, last + silence
        if self.last_at is None:
            return None, None
        return True, self.streak_since


class Sidecar:
    """The parts the HTTP handlers read: held together so each handler gets them in one."""

    def __init__(
        self,
        config_path: str,
        sync: SyncLoop,
        check: SharedCheck,
        watcher: ConfigWatcher,
        metrics: SidecarMetrics,
        guard: Guard | None = None,
        discovery: Discovery | None = None,
    ) -> None:
        self.config_path = config_path
        self.sync = sync
        self.check = check
        self.watcher = watcher
        self.metrics = metrics
        self.guard = guard or Guard(sync.desired.config.sidecar.token_file)
        desired = sync.desired
        self.discovery = discovery or Discovery(
            lambda: desired.config.master, lambda: desired.config.sidecar.discovery_idle
        )
        metrics.registry.register(_SyncFigures(sync.state))
        metrics.registry.register(_DiscoveryFigures(self.discovery))
        self.started_at = time.time()
        self.master_checks = MasterChecks(self.started_at)

    @property
    def config(self) -> Config:
        return self.sync.desired.config


SIDECAR: Final = web.AppKey("sidecar", Sidecar)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps_compact(body), status=status, content_type="application/json")


def _error(
    status: int, message: str, code: str | None = None, field: str | None = None
) -> web.Response:
    code = code or _ERROR_CODES.get(status, "internal_error" if status >= 500 else "bad_request")
    error = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return _json({"error": error}, status)


@web.middleware
async def guard_and_render(request: web.Request, handler: Any) -> web.StreamResponse:
    """Guard the routes that change state; render every error in the one JSON shape."""
    try:
        changes = request.method not in READS and request.match_info.http_exception is None
        if changes and request.match_info.handler is not not_served:  # a 501 changes nothing
            refusal = request.app[SIDECAR].guard.refusal(request)
            if refusal is not None:
                return refusal
        answer: web.StreamResponse = await handler(request)
        return answer
    except DiscoveryError as exc:
        refused = _error(exc.status, exc.message, exc.code, exc.field)
        if exc.retry_after is not None:
            refused.headers["Retry-After"] = exc.retry_after
        return refused
    except web.HTTPException as exc:
        return _render(request, exc)
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        return _error(500, "the sidecar failed to answer; see its log")
    finally:
        request_done(request)  # the connection's header deadline starts over


def _render(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    if exc.status < 400:
        raise exc  # a redirect is an answer
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        answer = _error(
            405, f"{request.method} {request.path}: not allowed; use {allowed or 'none'}"
        )
        answer.headers["Allow"] = allowed
        return answer
    if exc.status == 404:
        return _error(404, f"no such path: {request.path}")
    return _error(exc.status, exc.reason)


async def health(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    if request.headers.get("User-Agent", "").startswith(MASTER_CHECK_AGENT):
        sidecar.master_checks.seen(time.time(), sidecar.config.check.interval)
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


def _time(at: float | None) -> str | None:
    return format_time(at) if at else None


async def status(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    state = sidecar.sync.state
    desired = sidecar.sync.desired
    document = desired.document
    last = sidecar.check.last
    checks = sidecar.master_checks
    checking, checking_since = checks.view(time.time(), sidecar.config.check.interval)
    conflict = state.conflict
    return _json(
        {
            "config_path": sidecar.config_path,
            "registration": registration_json(sidecar.config, None, desired.instance),
            "instance": desired.instance,
            "registered": state.registered,
            "drained": state.drained,
            "draining_since": _time(state.draining_since),
            "master_url": state.master_url,
            "last_sync": _time(state.last_sync_at),
            "syncs": state.syncs,
            "failures": state.failures,
            "last_error": state.last_error,
            "last_error_at": _time(state.last_error_at),
            "config_error": sidecar.watcher.last_error,
            "openapi_sha256": document.sha256 if document else None,
            "openapi_error": state.openapi_error,
            "last_check": to_builtins(last) if last else None,
            "started_at": format_time(sidecar.started_at),
            "master": {
                "reachable": state.reachable,
                "since": _time(state.reachable_since),
                "error": state.unreachable_error,
                "checking": checking,
                "checking_since": _time(checking_since),
                "last_check_at": _time(checks.last_at),
            },
            "discovery": sidecar.discovery.figures(),
            "conflict": None
            if conflict is None
            else {
                "holder": conflict.holder,
                "message": conflict.message,
                "master_url": conflict.master_url,
                "since": format_time(conflict.since),
                "attempts": conflict.attempts,
            },
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
            "error": {"code": "master_unreachable", "message": sync.state.last_error or ""},
        },
        503,
    )


async def discover(request: web.Request) -> web.StreamResponse:
    """A read question of the master's, answered from the discovery cache."""
    sidecar = request.app[SIDECAR]
    if sidecar.config.master.token and not _is_loopback(request.remote):
        raise DiscoveryError(
            403,
            "forbidden",
            "this sidecar reads the master with its master.token: it answers discovery "
            "questions from loopback callers only (the service beside it)",
        )
    # A caller that hangs up cancels this (the runner's handler_cancellation): its slot of
    # the held requests is free at once.
    return await sidecar.discovery.answer(request)


async def not_served(request: web.Request) -> web.Response:
    """Any other /v1 path: a clear 501, as the master answers Consul's routes it does not
    serve (clients raise it as an error); a served path asked with another method: 405."""
    await refuse_other_methods(request, not_served)
    return _error(
        501,
        f"read-only catalog: not supported: {request.method} {request.path} (this is a "
        "PicoAPI sidecar: it answers /v1/services, the Consul catalog and health views and "
        "the Prometheus targets, from the master; ask the master for the rest)",
        "not_supported",
    )


def build_server(sidecar: Sidecar) -> web.Application:
    # A body is never needed: /drain takes none, so a large one is refused at once.
    app = web.Application(middlewares=[guard_and_render], client_max_size=64 * 1024)
    app[SIDECAR] = sidecar
    app.router.add_get("/health", health)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/drain", drain)
    for path in ROUTES:
        app.router.add_get(path, discover)
    app.router.add_route("*", "/v1/{tail:.*}", not_served)  # after every served route
    return app
