"""Health checking: the HTTP probe, the thresholds, and the scheduler that runs them.

The probe turns one GET into a CheckResult and never raises for a target's failure. The
StatusTracker sits between probe and registry and applies the two thresholds. The
HealthScheduler runs every service's check from ONE loop over a heap of due times, so
10,000 services cost one sleeping task, not 10,000; each due check runs in its own short
task, bounded by a semaphore, so a hanging target costs one slot for its own timeout and
delays nobody else.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import aiohttp
import structlog

from master.cluster import Ownership, Solo
from master.eviction import EvictionGuard
from master.metrics import Metrics
from master.model import CheckResult, CheckSpec, Record, Status
from master.policy import CheckPolicy, PolicyResolver
from master.registry import Registry
from master.shared import probe
from master.shared.logs import Budget

log = structlog.get_logger("master.health")

DEFAULT_CONCURRENCY: Final = 512
# Shorter than the usual server keep-alive (aiohttp's 75 s), so we drop an idle connection
# before the target does and never send a check down a socket the target just closed.
KEEPALIVE_SECONDS: Final = 15.0
DNS_CACHE_SECONDS: Final = 30
USER_AGENT: Final = "picoapi-master-health-check"
LAG_SAMPLES: Final = 10_000  # about 10 s of lags at 1,000 checks/s
FIRST_CHECK_WITHIN: Final = 1.0  # a new service or check url: checked this soon

ClientSessionFactory = Callable[[], aiohttp.ClientSession]


# --- the probe -------------------------------------------------------------------------


async def probe_http(session: aiohttp.ClientSession, url: str, timeout: float) -> CheckResult:
    """GET `url` once: 2xx passing, 429 warning, anything else (and every failure) critical;
    CheckNotRun when the request could not be made for a local reason."""
    return await probe.probe_http(session, url, timeout, user_agent=USER_AGENT, not_run=True)


# --- the thresholds --------------------------------------------------------------------


@dataclass(slots=True)
class StatusTracker:
    """One service's reported status, moved by probe results through the two thresholds.

    - From `unknown`, the first result is taken as it is.
    - `successes_before_passing` consecutive passing results make it `passing`.
    - Once the last `failures_before_critical` results are all non-passing, it becomes the
      mildest of them: `critical` only if every one was critical, else `warning`.
    - Otherwise it stays where it is (a single blip changes nothing).

    `critical_since` (monotonic seconds) is when it last became critical, for
    `deregister_after`; None while it is not critical.
    """

    failures_before_critical: int = 1
    successes_before_passing: int = 1
    status: Status = Status.UNKNOWN
    critical_since: float | None = None
    _passes: int = field(default=0, repr=False)
    _failures: int = field(default=0, repr=False)
    _criticals: int = field(default=0, repr=False)

    def observe(self, result: Status, now: float) -> Status:
        """Take one probe result; returns the status to report."""
        if result is Status.PASSING:
            self._passes += 1
            self._failures = self._criticals = 0
        else:
            self._passes = 0
            self._failures += 1
            self._criticals = self._criticals + 1 if result is Status.CRITICAL else 0
        if self.status is Status.UNKNOWN:
            new = result
        elif result is Status.PASSING:
            new = Status.PASSING if self._passes >= self.successes_before_passing else self.status
        elif self._failures >= self.failures_before_critical:
            critical = self._criticals >= self.failures_before_critical
            new = Status.CRITICAL if critical else Status.WARNING
        else:
            new = self.status
        if new is Status.CRITICAL and self.status is not Status.CRITICAL:
            self.critical_since = now
        elif new is not Status.CRITICAL:
            self.critical_since = None
        self.status = new
        return new

    def critical_for(self, now: float) -> float:
        """Seconds it has been critical without a break; 0 when it is not critical."""
        return 0.0 if self.critical_since is None else now - self.critical_since


# --- the scheduler ---------------------------------------------------------------------


@dataclass(eq=False, slots=True, kw_only=True)
class _Entry(StatusTracker):
    """What the scheduler knows of one service: its check, and its status through the
    thresholds (one object a service, not two: 10,000 of them). Replaced whole when its
    check url changes, so a probe still running against the old url finds itself orphaned
    and is dropped."""

    spec: CheckSpec
    name: str  # the service's name: what the eviction guard counts by
    refused: str | None = None  # why the check policy refuses its url (a literal address)
    generation: int = 0
    task: asyncio.Task[None] | None = None


class HealthScheduler:
    """Runs every registered service's check on a fixed-rate schedule.

    One loop pops due services off a heap of (due, generation, id). A heap entry whose
    generation no longer matches the service's (removed, or rescheduled after its check
    changed) is stale and skipped, so nothing has to be searched out of the heap. The
    registry listener only edits this schedule; all I/O happens in the loop's check tasks.
    """

    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        session_factory: ClientSessionFactory | None = None,
        ownership: Ownership | None = None,
        policy: CheckPolicy | None = None,
        guard: EvictionGuard | None = None,
    ) -> None:
        self._registry = registry
        self.guard = guard or EvictionGuard()
        self._policy = policy or CheckPolicy()
        self._ownership: Ownership = ownership or Solo()
        self._ownership.add_listener(self._rebalance)
        self._metrics = metrics
        self._session_factory = session_factory or partial(
            _default_session, concurrency, self._policy
        )
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._entries: dict[str, _Entry] = {}
        # How many of each name's instances this master checks: the eviction guard's
        # "instances" (with several masters, each guards the share it checks).
        self._checked: dict[str, int] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._generation = 0
        self._loop_task: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()
        self._waker: asyncio.Future[None] | None = None
        self._wake_at = 0.0
        self._lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        # Checks not run for a local fault: one line a second at most, however many fail.
        self._not_run_logs = Budget(log, "check_not_run", 1)
        self._running = False
        registry.add_listener(self._on_change)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Create the session, schedule every registered service and start the loop."""
        if self._loop_task is not None:
            raise RuntimeError("health scheduler already started")
        self._session = self._session_factory()
        self._running = True
        for record in self._registry.records():
            self._schedule(record, soon=False)  # spread over an interval: a start of many
        self._loop_task = asyncio.create_task(self._run(), name="health-scheduler")
        log.info("health_scheduler_started", services=len(self._entries))

    async def stop(self) -> None:
        """Cancel the loop and every running check, wait for them, close the session."""
        self._running = False
        tasks = [t for t in (self._loop_task, *self._checks) if t is not None]
        self._loop_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()
        self._checked.clear()
        self._heap.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        log.info("health_scheduler_stopped")

    # --- what the benchmark and tests read -----------------------------------------------

    def lag_samples(self) -> list[float]:
        """The most recent check lags (start time minus due time), in seconds."""
        return list(self._lags)

    # --- the schedule --------------------------------------------------------------------

    def _on_change(self, old: Record | None, new: Record | None) -> None:
        """The registry listener: synchronous, so it only edits the schedule."""
        if not self._running:
            return  # stopped: the registry has no way to remove a listener
        if new is None:
            if old is not None:
                self._unschedule(old.id)
                self.guard.forget(old.id)
            return
        self._schedule(new, soon=True)

    def _rebalance(self) -> None:
        """The share moved (a master came or went): take up what is ours now and let go
        of what is not. What is taken is spread over an interval, as at start: a master
        taking a dead one's thousands of services must not check them in one burst every
        interval for good (the phase stays); each is checked within its interval."""
        if not self._running:
            return
        taken = dropped = 0
        for record in self._registry.records():
            mine = record.check is not None and self._ownership.owns(record.id)
            if mine and record.id not in self._entries:
                self._schedule(record, soon=False)
                taken += 1
            elif not mine and self._unschedule(record.id):
                dropped += 1
        if taken or dropped:
            log.info("checks_rebalanced", taken=taken, dropped=dropped, checking=len(self._entries))

    def _schedule(self, new: Record, *, soon: bool) -> None:
        """Put `new`'s check on the schedule (or take it off): a new service, or a new url,
        is checked within about a second (`soon`); at start, the first checks spread over
        one interval, so a master with thousands of services does not fire them at once."""
        service_id = new.id
        spec = new.check
        entry = self._entries.get(service_id)
        if spec is None or not self._ownership.owns(service_id):
            self._unschedule(service_id)
            return
        if entry is not None and entry.name != new.name:  # renamed: counted by its new name
            self._count(entry.name, -1)
            self._count(new.name, 1)
            entry.name = new.name
        if entry is not None and entry.spec == spec:
            return  # only its status or registration moved: the schedule stands
        now = asyncio.get_running_loop().time()
        if entry is None or entry.spec.url != spec.url:
            # New, or a new url: the registry reset its status, so the thresholds restart.
            self._unschedule(service_id)
            entry = self._entries[service_id] = _Entry(
                name=new.name,
                failures_before_critical=spec.failures_before_critical,
                successes_before_passing=spec.successes_before_passing,
                status=new.status,
                critical_since=now if new.status is Status.CRITICAL else None,
                spec=spec,
                refused=self._policy.url_refusal(spec.url),
            )
            self._count(new.name, 1)
            spread = min(FIRST_CHECK_WITHIN, spec.interval) if soon else spec.interval
        else:
            entry.spec = spec
            entry.failures_before_critical = spec.failures_before_critical
            entry.successes_before_passing = spec.successes_before_passing
            spread = spec.interval
        self._generation += 1
        entry.generation = self._generation
        due = now + random.random() * spread
        heapq.heappush(self._heap, (due, entry.generation, service_id))
        if self._waker is not None and due < self._wake_at:
            _resolve(self._waker)

    def _unschedule(self, service_id: str) -> bool:
        """Take a service off the schedule; True if it was on it."""
        entry = self._entries.pop(service_id, None)
        if entry is None:
            return False
        self._count(entry.name, -1)
        return True

    def _count(self, name: str, change: int) -> None:
        left = self._checked.get(name, 0) + change
        if left > 0:
            self._checked[name] = left
        else:
            self._checked.pop(name, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            now = loop.time()
            while heap and heap[0][0] <= now:
                due, generation, service_id = heapq.heappop(heap)
                entry = self._entries.get(service_id)
                if entry is None or entry.generation != generation:
                    continue
                heapq.heappush(
                    heap, (next_due(due, entry.spec.interval, now), generation, service_id)
                )
                if entry.task is not None:
                    log.debug("check_skipped", service_id=service_id, reason="still running")
                    continue
                await self._slots.acquire()
                if self._entries.get(service_id) is not entry or entry.generation != generation:
                    self._slots.release()  # removed or rescheduled while waiting for a slot
                    continue
                task = asyncio.create_task(self._check(service_id, entry, due))
                entry.task = task
                self._checks.add(task)
                task.add_done_callback(partial(self._check_done, entry))
            await self._sleep_until(heap[0][0] if heap else None)

    async def _sleep_until(self, when: float | None) -> None:
        """Sleep until `when` (forever if None) or until the listener adds an earlier due."""
        loop = asyncio.get_running_loop()
        self._waker = waker = loop.create_future()
        self._wake_at = float("inf") if when is None else when
        handle = None if when is None else loop.call_at(when, _resolve, waker)
        try:
            await waker
        finally:
            if handle is not None:
                handle.cancel()
            self._waker = None

    def _check_done(self, entry: _Entry, task: asyncio.Task[None]) -> None:
        # A done callback, not a `finally`: it runs even for a task cancelled before it began.
        self._checks.discard(task)
        self._slots.release()
        if entry.task is task:
            entry.task = None

    # --- one check -----------------------------------------------------------------------

    async def _check(self, service_id: str, entry: _Entry, due: float) -> None:
        loop = asyncio.get_running_loop()
        lag = max(0.0, loop.time() - due)
        self._lags.append(lag)
        self._metrics.check_lag_seconds.observe(lag)
        spec = entry.spec
        assert self._session is not None
        self._metrics.checks_in_flight.inc()
        try:
            if entry.refused is not None:  # a stored record the policy now refuses
                result = probe.critical(f"not checked: {entry.refused}", time.perf_counter())
            else:
                result = await probe_http(self._session, spec.url, spec.timeout_s)
        except probe.CheckNotRun as exc:
            # Our fault, not the service's: no threshold moves, nothing is written.
            self._metrics.checks_not_run.labels(exc.reason).inc()
            if self._not_run_logs.spend():
                log.warning("check_not_run", service_id=service_id, reason=exc.reason)
            return
        finally:
            self._metrics.checks_in_flight.dec()
        self._metrics.checks.labels(result.status.value).inc()
        self._metrics.check_seconds.observe(result.duration_ms / 1000)
        if self._entries.get(service_id) is not entry:
            return  # removed, or its url changed, while the probe ran
        now = loop.time()
        status = entry.observe(result.status, now)
        try:
            record = await self._registry.record_check(service_id, spec.url, status, result)
            deregister_after = entry.spec.deregister_after
            if entry.critical_since is None:
                self.guard.forget(service_id)  # a dict miss, unless a reap was held
            elif (
                record is not None
                and deregister_after > 0
                and entry.critical_for(now) >= deregister_after
                and self.guard.allow(
                    service_id, record.name, self._checked.get(record.name, 0), now
                )
            ):
                await self._registry.delete(service_id, event="service_reaped")
        except Exception:
            # A store failure must not end health checking; the next round tries again,
            # because the registry compares the status against its own, not ours.
            log.exception("check_record_failed", service_id=service_id)


def next_due(due: float, interval: float, now: float) -> float:
    """Fixed rate: one interval after `due`; after a stall, skip the missed rounds (keeping
    the phase) instead of running them all at once."""
    return due + ((now - due) // interval + 1) * interval


def _resolve(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


def _default_session(concurrency: int, policy: CheckPolicy) -> aiohttp.ClientSession:
    """One session for every check: pooled keep-alive connections, cached DNS, no cookies
    (one service's cookie must never reach another), no session-wide timeout (each probe
    brings its own), and names resolved through the check policy (master.policy)."""
    connector = aiohttp.TCPConnector(
        limit=concurrency,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ttl_dns_cache=DNS_CACHE_SECONDS,
        resolver=PolicyResolver(policy),
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        headers={"User-Agent": USER_AGENT},
    )
