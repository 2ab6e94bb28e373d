"""Desired state plus one sync loop: keep the master's view of this service true.

The sidecar holds what it wants the master to know (the configuration in force and the
last OpenAPI document fetched) and a dirty flag. One loop registers, re-asserts every
`resync` (so a master that lost its data has the service again), re-sends at once when
the configuration changes, and backs off with a cap and jitter while the master is away.
Nothing here ever exits because the master is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import structlog

from master.model import canonical_document, openapi_digest, registration_body
from master.shared.daemon import cancel_and_wait
from sidecar.config import Config
from sidecar.openapi import OpenAPIError, fetch_openapi

log = structlog.get_logger("sidecar.sync")

BACKOFF_FIRST: Final = 0.5
BACKOFF_CAP: Final = 30.0
RESYNC_JITTER: Final = 0.1  # +-10 % so a fleet restarted together spreads its resyncs
MASTER_TIMEOUT: Final = 5.0
OPENAPI_TIMEOUT: Final = 5.0


class MasterError(Exception):
    """No master accepted the request; the message says what each one answered."""


@dataclass
class SyncState:
    """What /status shows of the sync loop."""

    registered: bool = False
    drained: bool = False
    master_url: str | None = None
    last_sync_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    failures: int = 0
    openapi_sha256: str | None = None
    openapi_error: str | None = None
    syncs: int = 0


class Syncer:
    """Owns the registration at the master, and the one task that keeps it there."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.state = SyncState()
        self.openapi: dict[str, Any] | None = None
        self._session = session
        self._dirty = asyncio.Event()
        self._master_digest: str | None = None
        self._sent_body: bytes | None = None
        self._openapi_failures = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sidecar-sync")

    async def stop(self) -> None:
        """Stop the loop; a PUT in flight is cancelled, so nothing re-registers after this."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    # --- inputs ------------------------------------------------------------------------

    def update_config(self, config: Config) -> None:
        """Swap in a new configuration whole; the loop sends it at once."""
        self.config = config
        self.mark_dirty()

    def mark_dirty(self) -> None:
        self._dirty.set()

    # --- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            ok = await self._sync()
            if ok and await self._refresh_openapi():
                ok = await self._sync()  # the document changed: send it now, not next resync
            if not ok:
                delay = self._backoff_delay(self.state.failures)
            elif self.config.service.openapi and self.openapi is None:
                delay = min(self._resync_delay(), self._backoff_delay(self._openapi_failures))
            else:
                delay = self._resync_delay()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._dirty.wait()
            self._dirty.clear()

    def _resync_delay(self) -> float:
        resync = self.config.sidecar.resync
        return resync * random.uniform(1 - RESYNC_JITTER, 1 + RESYNC_JITTER)

    @staticmethod
    def _backoff_delay(failures: int) -> float:
        ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(max(failures, 1) - 1, 16))
        return random.uniform(ceiling / 2, ceiling)  # "equal jitter": never a hot loop

    async def _refresh_openapi(self) -> bool:
        """Fetch the service's document; True when it differs from the one we hold."""
        url = self.config.service.openapi
        if url is None:
            changed = self.openapi is not None
            self.openapi = None
            self.state.openapi_sha256 = None
            return changed
        try:
            document = await fetch_openapi(self._session, url, timeout=OPENAPI_TIMEOUT)
        except OpenAPIError as exc:
            self._openapi_failures += 1
            if self.state.openapi_error != str(exc):
                log.warning("openapi_fetch_failed", url=url, reason=str(exc))
            self.state.openapi_error = str(exc)
            return False
        self.state.openapi_error = None
        self._openapi_failures = 0
        digest = openapi_digest(document)
        if digest == self.state.openapi_sha256:
            return False
        log.info("openapi_fetched", url=url, openapi_sha256=digest)
        self.openapi = document
        self.state.openapi_sha256 = digest
        return True

    async def _sync(self, resend: bool = True) -> bool:
        """PUT the desired registration; send the document only when the master lacks it."""
        config = self.config
        registration = config.registration()
        summary = registration_body(registration)  # what it says, without the document
        wanted = self.state.openapi_sha256
        body = summary
        if config.service.openapi is None and self._master_digest is not None:
            body = registration_body(registration, None)
        elif self.openapi is not None and wanted != self._master_digest:
            body = registration_body(registration, canonical_document(self.openapi))
        path = f"/v1/services/{config.service.id}"
        try:
            url, answer = await self._request("PUT", path, body)
        except MasterError as exc:
            self._failed(str(exc))
            return False
        self._master_digest = answer.get("openapi_sha256") if isinstance(answer, dict) else None
        state = self.state
        first = not state.registered or state.master_url != url
        state.registered, state.master_url = True, url
        state.last_sync_at, state.failures, state.syncs = time.time(), 0, state.syncs + 1
        if first or summary != self._sent_body:
            log.info(
                "registered",
                service_id=config.service.id,
                master_url=url,
                tags=list(config.service.tags),
                openapi_sha256=self._master_digest,
            )
        self._sent_body = summary
        if resend and self.openapi is not None and self._master_digest != wanted:
            return await self._sync(resend=False)  # the master lost the document: resend
        return True

    def _failed(self, reason: str) -> None:
        state = self.state
        state.failures += 1
        if state.last_error != reason or state.failures in (1, 5) or state.failures % 20 == 0:
            log.warning(
                "sync_failed",
                service_id=self.config.service.id,
                reason=reason,
                failures=state.failures,
            )
        state.last_error, state.last_error_at = reason, time.time()

    # --- leaving -----------------------------------------------------------------------

    async def deregister(self) -> bool:
        """DELETE the registration (a 404 counts: it is gone either way)."""
        config = self.config
        try:
            url, _ = await self._request(
                "DELETE", f"/v1/services/{config.service.id}", None, accept_404=True
            )
        except MasterError as exc:
            log.warning("deregister_failed", service_id=config.service.id, reason=str(exc))
            self.state.last_error, self.state.last_error_at = str(exc), time.time()
            return False
        self.state.registered = False
        log.info("deregistered", service_id=config.service.id, master_url=url)
        return True

    async def drain(self) -> bool:
        """Deregister now and stay deregistered until the sidecar restarts."""
        if not self.state.drained:
            log.info("drain_requested", service_id=self.config.service.id)
        self.state.drained = True
        await self.stop()
        return await self.deregister()

    # --- talking to the master ---------------------------------------------------------

    async def _request(
        self, method: str, path: str, body: bytes | None, *, accept_404: bool = False
    ) -> tuple[str, Any]:
        """Try each master URL in order; the first 2xx answer wins."""
        master = self.config.master
        headers = {"Content-Type": "application/json"}
        if master.token:
            headers["Authorization"] = f"Bearer {master.token}"
        errors: list[str] = []
        timeout = aiohttp.ClientTimeout(total=MASTER_TIMEOUT)
        for base in master.urls:
            url = base.rstrip("/") + path
            try:
                async with self._session.request(
                    method, url, data=body, headers=headers, timeout=timeout
                ) as response:
                    text = await response.text()
                    if response.status < 300 or (accept_404 and response.status == 404):
                        return base, _json_or_none(text)
                    errors.append(f"{base}: {response.status} {_error_message(text)}")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                errors.append(f"{base}: {_describe(exc)}")
        raise MasterError("; ".join(errors))


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _error_message(text: str) -> str:
    answer = _json_or_none(text)
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        error = answer["error"]
        field = f" ({error['field']})" if error.get("field") else ""
        return f"{error.get('message', '')}{field}"
    return text[:200]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {MASTER_TIMEOUT:g}s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    return str(exc) or type(exc).__name__
