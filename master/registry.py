"""The registry: what is registered, indexed for queries, with the index watchers wait on.

It knows nothing of HTTP. Every change goes through here: it is made durable in the store
first, then applied to the in-memory indexes, then the index moves and watchers wake.
Writes to one service id are serialized (so a health update cannot race a PUT); writes to
different ids run concurrently, which lets the store group them into one commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import structlog

from master.model import (
    KEEP,
    CheckResult,
    OpenAPIChange,
    Record,
    Registration,
    Status,
    dumps_compact,
    openapi_digest,
)
from master.store.base import Store

log = structlog.get_logger("master.registry")

Listener = Callable[[Record | None, Record | None], None]
"""Called as (old, new) after every change, also for check results that change nothing
the index counts (so the health scheduler sees a new check url or a removal at once)."""


class Registry:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._records: dict[str, Record] = {}
        self._by_name: dict[str, set[str]] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._by_status: dict[Status, set[str]] = {status: set() for status in Status}
        self._encoded: dict[str, str] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._listeners: list[Listener] = []
        self._index = 0
        self._changed = asyncio.Event()

    # --- loading and listening ---------------------------------------------------------

    async def load(self) -> int:
        """Fill the registry from the store; returns how many records were loaded."""
        stored = await self._store.open()
        for record_id, body in stored.items():
            try:
                record = Record.from_store(body)
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("store_record_skipped", service_id=record_id, reason=str(exc))
                continue
            self._install(None, record)
        self._index = 1
        return len(self._records)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- reads -------------------------------------------------------------------------

    @property
    def index(self) -> int:
        return self._index

    def __len__(self) -> int:
        return len(self._records)

    def get(self, record_id: str) -> Record | None:
        return self._records.get(record_id)

    def records(self) -> Iterable[Record]:
        return self._records.values()

    def query(
        self,
        tags: Iterable[str] = (),
        name: str | None = None,
        status: Status | None = None,
    ) -> list[Record]:
        """Records matching every filter, by id. Costs the size of the smallest index set."""
        candidates: list[set[str]] = [self._by_tag.get(tag, set()) for tag in tags]
        if name is not None:
            candidates.append(self._by_name.get(name, set()))
        if status is not None:
            candidates.append(self._by_status[status])
        if not candidates:
            ids: Iterable[str] = self._records
        else:
            candidates.sort(key=len)
            smallest, *rest = candidates
            ids = [i for i in smallest if all(i in other for other in rest)] if rest else smallest
        return [self._records[i] for i in sorted(ids)]

    def status_counts(self) -> dict[Status, int]:
        return {status: len(ids) for status, ids in self._by_status.items()}

    def tag_counts(self) -> dict[str, int]:
        return {tag: len(ids) for tag, ids in sorted(self._by_tag.items())}

    def names(self) -> dict[str, list[str]]:
        """Each service name with the union of its instances' tags (the Consul catalog view)."""
        result: dict[str, list[str]] = {}
        for name in sorted(self._by_name):
            tags: dict[str, None] = {}
            for record_id in sorted(self._by_name[name]):
                tags.update(dict.fromkeys(self._records[record_id].registration.tags))
            result[name] = list(tags)
        return result

    def encoded(self, record: Record) -> str:
        """The record's JSON text (without its document), cached until the record changes."""
        text = self._encoded.get(record.id)
        if text is None:
            text = self._encoded[record.id] = dumps_compact(record.to_json())
        return text

    async def wait(self, index: int, timeout: float) -> int:
        """Return once the index is past `index`, or after `timeout`; returns the index.

        An `index` ahead of ours (the master restarted and counts from 1 again) answers at
        once, so the watcher resynchronizes instead of waiting on a number that is gone.
        """
        if index != self._index:
            return self._index
        changed = self._changed
        try:
            async with asyncio.timeout(timeout):
                await changed.wait()
        except TimeoutError:
            pass
        return self._index

    def wake_all(self) -> None:
        """Answer every blocking query now (at shutdown), without moving the index."""
        self._changed.set()
        self._changed = asyncio.Event()

    # --- writes ------------------------------------------------------------------------

    async def put(self, registration: Registration, openapi: OpenAPIChange) -> tuple[Record, bool]:
        """Register or replace; returns the stored record and whether anything changed."""
        async with self._lock(registration.id):
            old = self._records.get(registration.id)
            if isinstance(openapi, dict):
                document: dict[str, Any] | None = openapi
                digest: str | None = openapi_digest(openapi)
            elif openapi is KEEP:
                document = old.openapi if old else None
                digest = old.openapi_sha256 if old else None
            else:
                document, digest = None, None
            unchanged = old is not None and old.registration == registration
            if unchanged and old is not None and old.openapi_sha256 == digest:
                return old, False
            now = time.time()
            same_check = old is not None and (
                old.registration.check.url if old.registration.check else None
            ) == (registration.check.url if registration.check else None)
            if old is not None and same_check:
                status, last_check = old.status, old.last_check
            else:
                status = Status.UNKNOWN if registration.check else Status.PASSING
                last_check = None
            new = Record(
                registration=registration,
                status=status,
                registered_at=old.registered_at if old else now,
                updated_at=now,
                openapi=document,
                openapi_sha256=digest,
                last_check=last_check,
            )
            text = await self._persist(new)
            self._install(old, new)
            self._encoded[new.id] = text
            self._bump()
            if old is None:
                log.info("service_registered", service_id=new.id, name=registration.name)
            else:
                log.info("service_updated", service_id=new.id, name=registration.name)
            return new, True

    async def delete(self, record_id: str, *, event: str = "service_deregistered") -> Record | None:
        """Remove a service; returns what was removed, or None if it was not registered."""
        async with self._lock(record_id):
            old = self._records.get(record_id)
            if old is None:
                return None
            await self._store.delete(record_id)
            self._install(old, None)
            self._bump()
            log.info(event, service_id=record_id, name=old.registration.name)
            return old

    async def record_check(
        self, record_id: str, check_url: str, status: Status, result: CheckResult
    ) -> Record | None:
        """Store a check's outcome (status already through the thresholds).

        A changed status is made durable and moves the index; a result that only confirms
        the status is kept in memory and wakes nobody. A result for a check url the service
        no longer has (re-registered while the probe ran) is dropped.
        """
        async with self._lock(record_id):
            old = self._records.get(record_id)
            if old is None or old.registration.check is None:
                return None
            if old.registration.check.url != check_url:
                return None
            new = replace(old, status=status, last_check=result)
            if status == old.status:
                self._install(old, new, notify=False)
                return new
            text = await self._persist(new)
            self._install(old, new)
            self._encoded[new.id] = text
            self._bump()
            log.info(
                "check_status_changed",
                service_id=record_id,
                old=old.status.value,
                new=status.value,
                output=result.output[:200],
            )
            return new

    # --- internals ---------------------------------------------------------------------

    async def _persist(self, record: Record) -> str:
        """Make `record` durable; returns its JSON text (without the document), so a write
        converts the record to JSON once for the store and the answer alike."""
        body = record.to_json()
        text = dumps_compact(body)
        body["openapi"] = record.openapi
        await self._store.put(record.id, body)
        return text

    @asynccontextmanager
    async def _lock(self, record_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(record_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[record_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[record_id]
            if users == 1:
                del self._locks[record_id]
            else:
                self._locks[record_id] = (lock, users - 1)

    def _install(self, old: Record | None, new: Record | None, *, notify: bool = True) -> None:
        record_id = (new or old).id  # type: ignore[union-attr]
        self._encoded.pop(record_id, None)
        if old is not None:
            self._unindex(old)
        if new is None:
            del self._records[record_id]
        else:
            self._records[record_id] = new
            self._index_record(new)
        if notify:
            for listener in self._listeners:
                listener(old, new)

    def _index_record(self, record: Record) -> None:
        self._by_name.setdefault(record.registration.name, set()).add(record.id)
        for tag in record.registration.tags:
            self._by_tag.setdefault(tag, set()).add(record.id)
        self._by_status[record.status].add(record.id)

    def _unindex(self, record: Record) -> None:
        _discard(self._by_name, record.registration.name, record.id)
        for tag in record.registration.tags:
            _discard(self._by_tag, tag, record.id)
        self._by_status[record.status].discard(record.id)

    def _bump(self) -> None:
        self._index += 1
        self._changed.set()
        self._changed = asyncio.Event()


def _discard(index: dict[str, set[str]], key: str, record_id: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(record_id)
        if not ids:
            del index[key]
