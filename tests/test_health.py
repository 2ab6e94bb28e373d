"""The probe against real HTTP targets, the thresholds as a table, the scheduler end to end."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import msgspec
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from master.eviction import EvictionGuard
from master.health import HealthScheduler, StatusTracker, next_due, probe_http
from master.metrics import Metrics
from master.model import OUTPUT_MAX, CheckSpec, Record, Registration, Status
from master.registry import Registry
from master.store.memory import MemoryStore

HUGE_BODY = b"x" * (5 * 1024 * 1024)
POLL = 0.02


class Target:
    """A real HTTP server on 127.0.0.1:0 whose answers the test controls, counting hits."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.codes: dict[str, int] = {}  # /code/{name} answers this status (default 200)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ok", self._text(200, "all good"))
        app.router.add_get("/busy", self._text(429, "slow down"))
        app.router.add_get("/down", self._text(503, "db unreachable"))
        app.router.add_get("/empty", self._text(200, ""))
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/behind", self._text(200, "followed"))
        app.router.add_get("/hang", self._hang)
        app.router.add_get("/huge", self._huge)
        app.router.add_get("/code/{name}", self._code)
        # handler_cancellation: a probe that times out must not leave its handler running.
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _text(self, code: int, text: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            return web.Response(status=code, text=text)

        return handler

    async def _redirect(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        raise web.HTTPFound("/behind")

    async def _hang(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        await asyncio.sleep(3600)
        return web.Response(text="never")

    async def _huge(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.Response(body=HUGE_BODY)

    async def _code(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.Response(status=self.codes.get(request.match_info["name"], 200), text="hi")


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    server = Target()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound (so nobody else takes it) but not listening: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(POLL)


# --- the probe -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "http_status", "output"),
    [
        ("/ok", Status.PASSING, 200, "all good"),
        ("/busy", Status.WARNING, 429, "slow down"),
        ("/down", Status.CRITICAL, 503, "db unreachable"),
        ("/empty", Status.PASSING, 200, "HTTP 200 OK"),
    ],
)
async def test_probe_maps_http_status(
    target: Target,
    session: aiohttp.ClientSession,
    path: str,
    status: Status,
    http_status: int,
    output: str,
) -> None:
    result = await probe_http(session, target.url(path), timeout=2.0)
    assert (result.status, result.http_status, result.output) == (status, http_status, output)
    assert result.duration_ms > 0


async def test_probe_does_not_follow_redirects(
    target: Target, session: aiohttp.ClientSession
) -> None:
    result = await probe_http(session, target.url("/redirect"), timeout=2.0)
    assert (result.status, result.http_status) == (Status.CRITICAL, 302)
    assert target.hits["/redirect"] == 1
    assert target.hits["/behind"] == 0


async def test_probe_times_out(target: Target, session: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    result = await probe_http(session, target.url("/hang"), timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.0
    assert (result.status, result.http_status) == (Status.CRITICAL, None)
    assert result.output == "timed out after 300ms"


async def test_probe_refused_connection(session: aiohttp.ClientSession, refused_port: int) -> None:
    result = await probe_http(session, f"http://127.0.0.1:{refused_port}/health", timeout=2.0)
    assert (result.status, result.http_status) == (Status.CRITICAL, None)
    assert "connection refused" in result.output


async def test_probe_dns_failure(session: aiohttp.ClientSession) -> None:
    result = await probe_http(session, "http://no-such-host.invalid/health", timeout=2.0)
    assert (result.status, result.http_status) == (Status.CRITICAL, None)
    assert "DNS lookup failed" in result.output


async def test_probe_reads_at_most_output_max(
    target: Target, session: aiohttp.ClientSession
) -> None:
    result = await probe_http(session, target.url("/huge"), timeout=2.0)
    assert (result.status, result.http_status) == (Status.PASSING, 200)
    assert result.output == "x" * OUTPUT_MAX
    # The session is still usable after abandoning the rest of the body.
    again = await probe_http(session, target.url("/ok"), timeout=2.0)
    assert again.status is Status.PASSING


async def test_probe_keeps_no_partial_character_at_the_cap(session: aiohttp.ClientSession) -> None:
    app = web.Application()

    async def euro(request: web.Request) -> web.Response:
        return web.Response(body=b"a" + "€".encode() * OUTPUT_MAX)  # "€" is 3 bytes

    app.router.add_get("/", euro)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        result = await probe_http(session, f"http://127.0.0.1:{port}/", timeout=2.0)
    finally:
        await runner.cleanup()
    assert "\ufffd" not in result.output
    assert len(result.output.encode()) <= OUTPUT_MAX


# --- the thresholds --------------------------------------------------------------------

P, W, C, U = Status.PASSING, Status.WARNING, Status.CRITICAL, Status.UNKNOWN


@pytest.mark.parametrize(
    ("failures", "successes", "start", "results", "expected"),
    [
        # From unknown the first result is taken as it is, whatever the thresholds.
        (3, 3, U, [C], [C]),
        (3, 3, U, [W], [W]),
        (3, 3, U, [P], [P]),
        # failures_before_critical
        (1, 1, P, [C, P], [C, P]),
        (3, 1, P, [C, C, C], [P, P, C]),
        (3, 1, P, [C, C, P, C, C, C], [P, P, P, P, P, C]),
        (2, 1, P, [W, W], [P, W]),
        (2, 1, P, [W, C], [P, W]),  # all non-passing, not all critical: the milder one
        (2, 1, P, [W, C, C], [P, W, C]),
        (2, 1, C, [W, C], [C, W]),  # leaving critical for warning needs no successes
        # successes_before_passing
        (1, 3, C, [P, P, P], [C, C, P]),
        (1, 3, C, [P, P, C, P, P, P], [C, C, C, C, C, P]),
        (1, 2, W, [P, P], [W, P]),
        (2, 2, P, [C, P, C], [P, P, P]),  # alternating never crosses either threshold
    ],
)
def test_status_tracker(
    failures: int, successes: int, start: Status, results: list[Status], expected: list[Status]
) -> None:
    tracker = StatusTracker(failures, successes, status=start)
    assert [tracker.observe(result, now=float(i)) for i, result in enumerate(results)] == expected


def test_status_tracker_counts_time_critical() -> None:
    tracker = StatusTracker(failures_before_critical=2)
    tracker.observe(P, now=0.0)
    tracker.observe(C, now=1.0)
    assert tracker.critical_for(5.0) == 0.0
    tracker.observe(C, now=2.0)
    tracker.observe(C, now=3.0)
    assert tracker.critical_for(5.0) == 3.0  # since the result that made it critical
    tracker.observe(W, now=4.0)
    assert tracker.critical_for(5.0) == 0.0


# --- the scheduler ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("due", "now", "expected"),
    [
        (100.0, 100.0, 110.0),  # on time
        (100.0, 109.9, 110.0),  # late within the interval: the next round keeps its slot
        (100.0, 110.0, 120.0),  # a whole round late: that round is skipped, not doubled
        (100.0, 135.0, 140.0),  # far behind: skip forward, keep the phase
    ],
)
def test_next_due_is_fixed_rate_and_skips_missed_rounds(
    due: float, now: float, expected: float
) -> None:
    assert next_due(due, 10.0, now) == expected


@pytest.fixture
async def registry() -> Registry:
    reg = Registry(MemoryStore())
    await reg.load()
    return reg


@pytest.fixture
async def scheduler(registry: Registry) -> AsyncIterator[HealthScheduler]:
    health = HealthScheduler(registry, Metrics())
    await health.start()
    yield health
    await health.stop()


def every_second(url: str) -> CheckSpec:
    return CheckSpec(url=url, interval=1.0, timeout=0.5)


async def register(registry: Registry, service_id: str, check: CheckSpec) -> Record:
    registration = Registration(
        id=service_id, name="svc", address="127.0.0.1", port=8080, check=check
    )
    record, _ = await registry.put(registration, None)
    return record


def status_of(registry: Registry, service_id: str) -> Status | None:
    record = registry.get(service_id)
    return None if record is None else record.status


async def test_status_changes_move_the_index_confirmations_do_not(
    target: Target, registry: Registry, scheduler: HealthScheduler
) -> None:
    # Registered after start: the idle loop must wake for it.
    await register(registry, "flip", every_second(target.url("/code/flip")))
    await wait_until(lambda: status_of(registry, "flip") is Status.PASSING)
    index = registry.index
    await wait_until(lambda: target.hits["/code/flip"] >= 2, timeout=3.0)
    await asyncio.sleep(POLL)  # let the second result land
    assert registry.index == index  # a confirmation wakes nobody

    target.codes["flip"] = 503
    await wait_until(lambda: status_of(registry, "flip") is Status.CRITICAL, timeout=3.0)
    assert registry.index == index + 1
    record = registry.get("flip")
    assert record is not None and record.last_check is not None
    assert record.last_check.http_status == 503


async def test_thresholds_apply_end_to_end(
    target: Target, registry: Registry, scheduler: HealthScheduler
) -> None:
    spec = msgspec.structs.replace(
        every_second(target.url("/code/slow")), failures_before_critical=2
    )
    await register(registry, "slow", spec)
    await wait_until(lambda: status_of(registry, "slow") is Status.PASSING)
    target.codes["slow"] = 500
    hits = target.hits["/code/slow"]
    await wait_until(lambda: target.hits["/code/slow"] > hits, timeout=3.0)
    await asyncio.sleep(0.1)
    assert status_of(registry, "slow") is Status.PASSING  # one failure is not enough
    await wait_until(lambda: status_of(registry, "slow") is Status.CRITICAL, timeout=3.0)


async def test_critical_service_is_reaped_after_deregister_after(
    target: Target, registry: Registry
) -> None:
    spec = msgspec.structs.replace(every_second(target.url("/down")), deregister_after=0.5)
    await register(registry, "doomed", spec)  # before start: picked up from the registry
    health = HealthScheduler(registry, Metrics())
    with capture_logs() as logs:
        await health.start()
        try:
            await wait_until(lambda: registry.get("doomed") is None, timeout=4.0)
        finally:
            await health.stop()
    reaped = [e for e in logs if e["event"] == "service_reaped"]
    assert [e["service_id"] for e in reaped] == ["doomed"]
    assert target.hits["/down"] == 2  # critical on the first check, reaped on the second


class Share:
    """A master's share of the checks, as the cluster's membership gives it: these ids."""

    def __init__(self, ids: set[str]) -> None:
        self.ids = ids

    def owns(self, service_id: str) -> bool:
        return service_id in self.ids

    def add_listener(self, listener: Callable[[], None]) -> None:
        return None


async def test_a_master_checking_part_of_a_name_reaps_its_share_of_what_it_checks(
    target: Target, registry: Registry
) -> None:
    # Eight instances of one name, all down; this master checks four (three masters on
    # etcd split them). Its guard allows half of the four, not half of the eight: the
    # masters together then reap at most the share of the name, whoever checks what.
    spec = msgspec.structs.replace(every_second(target.url("/down")), deregister_after=0.3)
    ids = [f"svc-{i}" for i in range(8)]
    for service_id in ids:
        await register(registry, service_id, spec)
    guard = EvictionGuard(share=0.5, hold_max=3600)
    health = HealthScheduler(registry, Metrics(), ownership=Share(set(ids[:4])), guard=guard)
    await health.start()
    try:
        await wait_until(lambda: guard.holding() == {"svc": 2}, timeout=6.0)
        await asyncio.sleep(1.5)  # a round more: still held, nothing more reaped
        assert guard.holding() == {"svc": 2}
    finally:
        await health.stop()
    left = [service_id for service_id in ids if registry.get(service_id) is not None]
    assert len([i for i in left if i in ids[:4]]) == 2  # two of its four reaped, two held
    assert ids[4:] == [i for i in left if i not in ids[:4]]  # the others' are not its own


async def test_changed_check_url_is_rescheduled_and_old_results_dropped(
    target: Target, registry: Registry, scheduler: HealthScheduler
) -> None:
    await register(registry, "moving", every_second(target.url("/hang")))
    await wait_until(lambda: target.hits["/hang"] == 1, timeout=2.0)  # a probe is in flight
    new_url = target.url("/ok")
    await register(registry, "moving", every_second(new_url))
    assert status_of(registry, "moving") is Status.UNKNOWN
    index = registry.index

    await wait_until(lambda: status_of(registry, "moving") is Status.PASSING, timeout=2.0)
    await asyncio.sleep(0.6)  # past the old probe's timeout: its result must be dropped
    record = registry.get("moving")
    assert record is not None and record.last_check is not None
    assert record.status is Status.PASSING
    assert record.last_check.http_status == 200
    assert registry.index == index + 1  # unknown -> passing, never through critical
    assert target.hits["/hang"] == 1


async def test_hanging_targets_do_not_delay_fast_ones(target: Target, registry: Registry) -> None:
    metrics = Metrics()
    health = HealthScheduler(registry, metrics)
    await health.start()
    try:
        for i in range(20):
            hang = CheckSpec(url=target.url("/hang"), interval=1.0, timeout=0.9)
            await register(registry, f"hang-{i}", hang)
            fast = every_second(target.url(f"/code/f{i}"))
            await register(registry, f"fast-{i}", fast)
        await wait_until(
            lambda: all(target.hits[f"/code/f{i}"] >= 3 for i in range(20)), timeout=5.0
        )
    finally:
        await health.stop()
    lags = health.lag_samples()
    assert len(lags) >= 60
    assert max(lags) < 0.3
    assert all(status_of(registry, f"hang-{i}") is Status.CRITICAL for i in range(20))
    assert all(status_of(registry, f"fast-{i}") is Status.PASSING for i in range(20))


async def test_stop_cancels_hanging_checks_and_closes_its_session(
    target: Target, registry: Registry
) -> None:
    created: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        created.append(aiohttp.ClientSession())
        return created[-1]

    health = HealthScheduler(registry, Metrics(), session_factory=factory)
    await health.start()
    await register(registry, "stuck", CheckSpec(url=target.url("/hang"), interval=2.0, timeout=1.5))
    await wait_until(lambda: target.hits["/hang"] == 1, timeout=3.0)
    started = time.monotonic()
    await health.stop()
    assert time.monotonic() - started < 0.5
    assert created and created[0].closed
    assert status_of(registry, "stuck") is Status.UNKNOWN  # the cancelled probe recorded nothing


async def test_check_still_running_when_due_again_is_not_started_twice(
    target: Target, registry: Registry, scheduler: HealthScheduler
) -> None:
    # The wire format keeps timeout < interval; forced past it, a probe outlives a round.
    spec = CheckSpec(url=target.url("/hang"), interval=0.5, timeout=0.4)
    msgspec.structs.force_setattr(spec, "timeout", 1.6)
    await register(registry, "overlap", spec)
    await wait_until(lambda: target.hits["/hang"] == 1, timeout=2.0)
    await asyncio.sleep(1.2)  # at least two rounds come due while the probe hangs
    assert target.hits["/hang"] == 1
    await wait_until(lambda: status_of(registry, "overlap") is Status.CRITICAL, timeout=2.0)
