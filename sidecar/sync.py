"""The sync loop: keep the master's view of this service equal to the desired state.

One loop (Consul's anti-entropy, `agent/local/ae/ae.go`): it registers, re-asserts every
`sidecar.resync` with +-10 % jitter (a master that lost its data has the service back within
one resync, and a fleet restarted together spreads out), sends at once when the desired
state turns dirty, and backs off with a cap and equal jitter while no master takes it. The
master answers each PUT with the digest of the document it holds; when that is not ours
(it lost it), the document goes again at once, and an unchanged resync sends none. The
service's document is fetched every resync, and sooner while the service is not up yet.
Nothing here ever exits because the master or the service is away.

The registration names this sidecar's instance as the holder of the id. A master that says
another instance holds it (409 `id_conflict`) is asked again at every resync, not with the
fast backoff: the holder keeps the id until it turns critical, and then a PUT takes it
over. An edited `service.id` registers the new id and deregisters the old one.

The owner runs `run()` as its task and cancels it to stop; `deregister` and `drain` are
called from outside the loop (the owner at shutdown, `/drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Final

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, Counter

from master.model import Registration
from sidecar.config import MasterLink
from sidecar.desired import Desired
from sidecar.master_client import IdConflict, MasterClient, MasterError, Stored
from sidecar.openapi import OpenAPIError, fetch_openapi

log = structlog.get_logger("sidecar.sync")

BACKOFF_FIRST: Final = 0.5
BACKOFF_CAP: Final = 30.0
RESYNC_JITTER: Final = 0.1  # +-10 %
OPENAPI_TIMEOUT: Final = 5.0
LOG_AGAIN_AFTER: Final = (1, 5)  # a repeated failure is logged at these counts, then every 20th


@dataclass
class Conflict:
    """Another instance holds the id, as a master said (409 id_conflict)."""

    holder: str | None  # its instance, from the master's message
    message: str  # the master's own words
    master_url: str
    since: float
    attempts: int = 1


@dataclass
class SyncState:
    """What /status shows of the loop."""

    registered: bool = False
    drained: bool = False
    draining_since: float | None = None  # when it began to report `draining` (a grace)
    master_url: str | None = None
    last_sync_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    failures: int = 0  # consecutive; 0 once a master takes a PUT
    syncs: int = 0
    openapi_error: str | None = None
    conflict: Conflict | None = None
    # Whether the last request to the master went through (a refused id counts: a master
    # answered it), since when that is so, and why not; None until the first request.
    reachable: bool | None = None
    reachable_since: float | None = None
    unreachable_error: str | None = None

    def reached(self, ok: bool, error: str | None = None) -> None:
        if ok != self.reachable:
            self.reachable, self.reachable_since = ok, time.time()
        self.unreachable_error = None if ok else error


class SyncMetrics:
    """The loop's events, counted as they happen."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.syncs = Counter(
            "picoapi_sidecar_syncs",
            "Registrations a master accepted (PUTs answered 2xx).",
            registry=registry,
        )
        self.failures = Counter(
            "picoapi_sidecar_sync_failures",
            "Syncs that no master accepted.",
            registry=registry,
        )


def backoff_delay(failures: int) -> float:
    """Capped exponential backoff with "equal jitter": never a hot loop, never in step."""
    ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(max(failures, 1) - 1, 16))
    return random.uniform(ceiling / 2, ceiling)


def resync_delay(resync: float) -> float:
    return resync * random.uniform(1 - RESYNC_JITTER, 1 + RESYNC_JITTER)


class SyncLoop:
    def __init__(
        self,
        desired: Desired,
        client: MasterClient,
        session: aiohttp.ClientSession,
        metrics: SyncMetrics | None = None,
    ) -> None:
        self.desired = desired
        self.state = SyncState()
        self._client = client
        self._session = session  # for the service's document
        self._metrics = metrics or SyncMetrics(CollectorRegistry())
        self._master_sha256: str | None = None  # the document the master said it holds
        self._synced_id: str | None = None  # the id that _master_sha256 is about
        self._refused = False  # the last PUT met an id held by another instance
        self._announced: tuple[str, Registration] | None = None  # last logged `registered`
        self._fetched_from: str | None = None
        self._fetch_failures = 0
        # Held for each PUT, so that /drain's DELETE never overtakes a PUT in flight.
        self._putting = asyncio.Lock()
        self._leaving: asyncio.Task[bool] | None = None  # the one drain, however asked
        self.left = False  # a drain's DELETE went through: nothing left to deregister
        # Set by the owner to its second-signal event: it cuts a drain's grace short.
        self.hurry = asyncio.Event()

    # --- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled, or until drained."""
        clock = asyncio.get_running_loop().time
        resync_at = fetch_at = clock()
        while not self.state.drained:
            if self.desired.take_dirty() or clock() >= resync_at:
                ok = await self.sync()
                # A refused id waits for its holder to turn critical: at the resync pace.
                again = ok or self._refused
                delay = self._resync_delay() if again else backoff_delay(self.state.failures)
                resync_at = clock() + delay
            if clock() >= fetch_at or self.desired.config.service.openapi != self._fetched_from:
                fetch_at = clock() + await self._fetch_document()
            await self.desired.wait_dirty(min(resync_at, fetch_at) - clock())

    def _resync_delay(self) -> float:
        return resync_delay(self.desired.config.sidecar.resync)

    async def sync(self) -> bool:
        """One PUT of the desired state (two when the master turns out to lack the
        document), then the DELETE of any id a reload moved away from; False if no master
        took the PUT."""
        async with self._putting:
            self._refused = False
            if self.state.drained:
                return False
            desired = self.desired
            config, registration = desired.config, desired.registration
            if config.service.id != self._synced_id:
                self._master_sha256 = None  # a new id: the master holds no document for it
            for _ in range(2):
                sent_document = not desired.agrees(self._master_sha256)
                body = desired.body(self._master_sha256)
                try:
                    stored = await self._client.put(config.master, config.service.id, body)
                except IdConflict as exc:
                    self._refused = True
                    self._conflicted(exc)
                    await self._retire()
                    return False
                except MasterError as exc:
                    self._failed(str(exc))
                    return False
                self._synced(stored, registration)
                if desired.agrees(stored.openapi_sha256):
                    break
                if sent_document:  # sent, and still not held: say so, and do not loop
                    log.warning(
                        "openapi_not_kept",
                        service_id=config.service.id,
                        master_url=stored.url,
                        openapi_sha256=stored.openapi_sha256,
                    )
                    break
                # The master lost the document (restarted on an empty store): send it now.
            await self._retire()
            return True

    def _synced(self, stored: Stored, registration: Registration) -> None:
        state = self.state
        self._master_sha256 = stored.openapi_sha256
        self._synced_id = registration.id
        state.registered, state.master_url = True, stored.url
        state.last_sync_at, state.failures, state.syncs = time.time(), 0, state.syncs + 1
        state.reached(True)
        conflict, state.conflict = state.conflict, None
        self._metrics.syncs.inc()
        if self._announced != (stored.url, registration):
            self._announced = (stored.url, registration)
            log.info(
                "registered",
                service_id=registration.id,
                master_url=stored.url,
                tags=list(registration.tags),
                openapi_sha256=stored.openapi_sha256,
                **({"taken_over_from": conflict.holder} if conflict else {}),
            )

    def _failed(self, reason: str) -> None:
        state = self.state
        state.failures += 1
        state.reached(False, reason)
        self._metrics.failures.inc()
        again = state.failures in LOG_AGAIN_AFTER or state.failures % 20 == 0
        if state.last_error != reason or again:
            log.warning(
                "sync_failed",
                service_id=self.desired.config.service.id,
                reason=reason,
                failures=state.failures,
            )
        state.last_error, state.last_error_at = reason, time.time()

    def _conflicted(self, exc: IdConflict) -> None:
        """Another instance holds the id: not registered, and said so, once per holder
        (then every 20th refusal); the loop asks again at every resync."""
        state, now = self.state, time.time()
        state.registered = False
        state.failures += 1
        state.reached(True)
        self._metrics.failures.inc()
        self._announced = None
        previous = state.conflict
        if previous is not None and previous.holder == exc.holder:
            previous.attempts += 1
            previous.message, previous.master_url = exc.message, exc.url
        else:
            state.conflict = Conflict(exc.holder, exc.message, exc.url, now)
        conflict = state.conflict
        assert conflict is not None
        if conflict is not previous or conflict.attempts % 20 == 0:
            log.warning(
                "id_conflict",
                service_id=self.desired.config.service.id,
                holder=exc.holder,
                instance=self.desired.instance,
                master_url=exc.url,
                reason=exc.message,
                attempts=conflict.attempts,
                retry="at every resync; the holder keeps the id until it is critical",
            )
        state.last_error, state.last_error_at = str(exc), now

    async def _fetch_document(self) -> float:
        """Fetch the service's document into the desired state (dirty if it changed);
        the seconds until the next fetch."""
        url = self.desired.config.service.openapi
        self._fetched_from = url
        if url is None:
            self.state.openapi_error = None
            return self._resync_delay()
        try:
            document = await fetch_openapi(self._session, url, timeout=OPENAPI_TIMEOUT)
        except OpenAPIError as exc:
            self._fetch_failures += 1
            if self.state.openapi_error != str(exc):
                log.warning("openapi_fetch_failed", url=url, reason=str(exc))
            self.state.openapi_error = str(exc)
            if self.desired.document is None:  # not up yet: try again soon
                return min(self._resync_delay(), backoff_delay(self._fetch_failures))
            return self._resync_delay()  # keep the one we have until the next resync
        self._fetch_failures = 0
        self.state.openapi_error = None
        if self.desired.set_document(document):
            assert self.desired.document is not None
            log.info("openapi_fetched", url=url, openapi_sha256=self.desired.document.sha256)
        return self._resync_delay()

    # --- leaving -----------------------------------------------------------------------

    async def deregister(self) -> bool:
        """DELETE the registration (and any id a reload moved away from); False (and
        logged) if no master answered for the current id. An id that another instance
        holds is left to it: there is nothing of ours to remove."""
        config = self.desired.config
        ok = await self._delete(config.master, config.service.id)
        if ok:
            self.state.registered = False
            self._announced = None
        await self._retire()
        return ok

    async def _retire(self) -> None:
        """Deregister the ids a reload moved away from, until each is gone."""
        for service_id, link in list(self.desired.retired):
            if await self._delete(link, service_id, reason="service.id changed"):
                self.desired.retire_done(service_id)

    async def _delete(self, master: MasterLink, service_id: str, reason: str = "") -> bool:
        extra = {"because": reason} if reason else {}
        try:
            url = await self._client.delete(master, service_id, self.desired.instance)
        except IdConflict as exc:
            self.state.reached(True)
            log.info(
                "deregister_not_held",
                service_id=service_id,
                holder=exc.holder,
                master_url=exc.url,
                **extra,
            )
            return True
        except MasterError as exc:
            log.warning("deregister_failed", service_id=service_id, reason=str(exc), **extra)
            self.state.last_error, self.state.last_error_at = str(exc), time.time()
            self.state.reached(False, str(exc))
            return False
        self.state.reached(True)
        log.info("deregistered", service_id=service_id, master_url=url, **extra)
        return True

    async def drain(self) -> bool:
        """Take the service out and keep it out until the sidecar restarts (POST /drain,
        and SIGTERM). With `sidecar.drain_grace`, first tell the master the instance is
        draining (watchers see it go, Consul's passing drops it, calls in flight finish)
        and wait that long, or until a second signal; then deregister. The loop ends at
        its next turn, and a PUT in flight finishes before the DELETE goes. Asked twice
        (a preStop /drain, then SIGTERM), both wait for the one drain."""
        if self._leaving is None:
            self._leaving = asyncio.create_task(self._leave(), name="sidecar-drain")
        return await asyncio.shield(self._leaving)

    async def stop_drain(self) -> None:
        """The owner's, after its deregister step: a drain that step cut short (its bound,
        a second signal) ends here, before the session it uses is closed. The drain is
        shielded from whoever waits on it (/drain, the step), so only this ends it."""
        task = self._leaving
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _leave(self) -> bool:
        config = self.desired.config
        grace = config.sidecar.drain_grace
        log.info("drain_requested", service_id=config.service.id, grace_s=grace)
        if grace > 0 and not self.state.drained:
            self.desired.start_draining()
            self.state.draining_since = time.time()
            reported = await self.sync()
            log.info(
                "draining",
                service_id=config.service.id,
                reported=reported,
                deregister_in_s=grace,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.hurry.wait()
        self.state.drained = True
        self.desired.mark_dirty()  # wake the loop, so it ends
        async with self._putting:
            gone = await self.deregister()
        if gone:
            self.left = True
        else:
            self._leaving = None  # no master answered: the next drain tries the DELETE again
        return gone
