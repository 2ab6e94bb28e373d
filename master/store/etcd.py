"""`etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`: one registry shared by several masters.

Keys, under the prefix (default `/picoapi/`):
- `services/{id}`: one record each, its JSON as the registry encodes it;
- `documents/{sha256}`: each OpenAPI document once, however many records name it;
- `members/{member}`: one per live master, on that master's lease (master.cluster).

A write is one etcd transaction that compares the record's mod revision with the one the
registry expects (0: absent), so two masters cannot both win a record, and an identical
PUT stays a no-op everywhere. A record that names a document it does not bring also
compares that the document is there. Nothing is on a per-service lease: a lapsed lease
after a network blip must never deregister a fleet.

The feed is one watch over the whole prefix, from the snapshot's revision on: every
master applies the same commits in the same order, its own and the others', so every
master reports the same index for the same state. The watch resumes from the next
revision after a break; if that revision was compacted away, the store lists everything
again and hands the registry a full snapshot. While etcd is unreachable the store says it
is stale (the API says so in a header and in /healthz), writes fail with StoreError (503),
and the watch keeps trying, with backoff, until etcd is back.

Unreferenced documents are not deleted by the write that stops naming them (another master
may be naming them at the same moment): a sweep deletes a document only in a transaction
that also checks no record changed since the view it found the document unreferenced in.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import urlsplit

import structlog

from master.model import Document
from master.store.base import Change, Conflict, Snapshot, Store, StoredRecord, StoreError
from master.store.etcd_gateway import (
    Compacted,
    Compare,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Event,
    Op,
    WatchBatch,
    WatchIdle,
    prefix_end,
)

log = structlog.get_logger("master.store.etcd")

DEFAULT_PREFIX: Final = "/picoapi/"
URL_FORM: Final = "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"
REQUEST_TIMEOUT: Final = 5.0
WATCH_IDLE: Final = 60.0  # a silent watch is restarted (a cut network is not a quiet one)
RETRY_FIRST: Final = 0.2
RETRY_CAP: Final = 5.0
ELECTION_WAIT: Final = 3.0  # a write rides through a leader election this long
WRITE_ATTEMPTS: Final = 4  # ...in at most this many tries (one may time out on a dead member)
SWEEP_SECONDS: Final = 60.0  # how often unreferenced documents are looked for
SWEEP_GRACE: Final = 30.0  # unreferenced this long in our view before it may go

MemberListener = Callable[[dict[str, int]], None]
"""Called with every live member (name -> the revision it joined at) after a change."""


@dataclass(frozen=True, slots=True)
class EtcdURL:
    endpoints: tuple[str, ...]
    prefix: str

    @classmethod
    def parse(cls, url: str) -> EtcdURL:
        parts = urlsplit(url)
        if parts.scheme != "etcd" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"bad etcd store URL {url!r}: use {URL_FORM}")
        endpoints = []
        for member in parts.netloc.split(","):
            host, _, port = member.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"etcd store URL {url!r}: {member!r} is not HOST:PORT")
            endpoints.append(f"http://{member}")
        prefix = parts.path or DEFAULT_PREFIX
        if not prefix.endswith("/"):
            prefix += "/"
        return cls(tuple(endpoints), prefix)


class EtcdStore(Store):
    def __init__(self, url: str, *, timeout: float = REQUEST_TIMEOUT) -> None:
        parsed = EtcdURL.parse(url)
        self.url = url
        self.prefix = parsed.prefix.encode()
        self.client = EtcdClient(parsed.endpoints, timeout=timeout)
        self._services = self.prefix + b"services/"
        self._documents = self.prefix + b"documents/"
        self._members = self.prefix + b"members/"
        # Put by every write's txn: its mod revision is the registry's index, the same on
        # every master (a member coming or going moves etcd's revision, not this).
        self._index_key = self.prefix + b"index"
        self._revision = 0  # the last revision the feed handed on
        self._watcher: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._restart = asyncio.Event()
        self._member_listeners: list[MemberListener] = []
        self._members_now: dict[str, int] = {}
        self._document_users: Callable[[], dict[str, int]] | None = None
        self._unreferenced: dict[str, float] = {}  # sha -> when we first saw it unused
        self._following = False  # the current watch stream is acknowledged
        self.stale_since: float | None = None  # monotonic time the feed was lost, if it is
        self.last_error: str | None = None

    @classmethod
    def from_url(cls, url: str) -> EtcdStore:
        return cls(url)

    def describe(self) -> str:
        return self.url

    def log_fields(self) -> dict[str, Any]:
        return {"endpoints": list(self.client.endpoints), "prefix": self.prefix.decode()}

    def stale_for(self) -> float | None:
        if self.stale_since is None:
            return None
        return time.monotonic() - self.stale_since

    # --- the snapshot and the feed --------------------------------------------------------

    async def open(self) -> Snapshot:
        try:
            return await self._list()
        except EtcdError as exc:
            raise StoreError(f"cannot read {self.url}: {exc}") from exc

    async def _list(self) -> Snapshot:
        revision, kvs = await self.client.range(self.prefix, prefix_end(self.prefix))
        records: dict[str, StoredRecord] = {}
        documents: dict[str, bytes] = {}
        members: dict[str, int] = {}
        index = 0
        for kv in kvs:
            if kv.key == self._index_key:
                index = kv.mod_revision
                continue
            kind, name = self._split(kv.key)
            if kind == "services":
                records[name] = StoredRecord(kv.value, kv.create_revision, kv.mod_revision)
            elif kind == "documents":
                documents[name] = kv.value
            elif kind == "members":
                members[name] = kv.create_revision
        self._revision = revision  # where the watch goes on from
        self._set_members(members)
        return Snapshot(index, records, documents)

    def subscribe(self, feed: Callable[[Change], None]) -> None:
        super().subscribe(feed)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="etcd-watch")

    def add_member_listener(self, listener: MemberListener) -> None:
        self._member_listeners.append(listener)
        listener(dict(self._members_now))

    def follow_documents(self, users: Callable[[], dict[str, int]]) -> None:
        """Start the sweep of unreferenced documents; `users` counts each one's records."""
        self._document_users = users
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="etcd-document-sweep")

    def restart_watch(self) -> None:
        """Something else found etcd unreachable (a failed keepalive): do not wait for the
        watch to notice by itself."""
        self._restart.set()

    async def _watch(self) -> None:
        """Follow the prefix for as long as the store is open; never ends by an error."""
        failures = 0
        while True:
            self._following = False
            try:
                await self._follow()
            except WatchIdle:
                # Silence on a stream etcd acknowledged: most often a quiet registry (etcd's
                # progress notifications come every 10 min by default). Start a new stream
                # at once: if etcd is out of reach, that one fails and says so.
                log.debug("etcd_watch_idle", revision=self._revision)
                continue
            except Compacted as exc:
                log.warning(
                    "etcd_watch_compacted", revision=self._revision, oldest=exc.compact_revision
                )
                if await self._reload():
                    continue
                self._following = False  # etcd answered the watch, not the listing: back off
                failures += 1
            except (EtcdError, OSError) as exc:
                failures += 1
                self._lost(str(exc), failures)
            except _Restart:
                failures += 1
                self._lost("restarted after a failed request elsewhere", failures)
            if self._following:  # the stream was up: this is a new run of failures
                failures = min(failures, 1)
            ceiling = min(RETRY_CAP, RETRY_FIRST * 2 ** min(failures, 10))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(random.uniform(ceiling / 2, ceiling)):
                    await self._restart.wait()

    async def _follow(self) -> None:
        """One watch stream, until it breaks or someone asks for a new one."""
        self._restart.clear()
        consumer = asyncio.create_task(self._consume(), name="etcd-watch-stream")
        restart = asyncio.create_task(self._restart.wait())
        try:
            done, _ = await asyncio.wait({consumer, restart}, return_when=asyncio.FIRST_COMPLETED)
            if consumer in done:
                consumer.result()  # the stream's own end: its error
                return
            raise _Restart
        finally:
            for task in (consumer, restart):
                task.cancel()
            await asyncio.gather(consumer, restart, return_exceptions=True)

    async def _consume(self) -> None:
        stream = cast(
            AsyncGenerator[WatchBatch, None],
            self.client.watch(
                self.prefix,
                prefix_end(self.prefix),
                self._revision + 1,
                idle_timeout=WATCH_IDLE,
                on_created=self._created,
            ),
        )
        async with contextlib.aclosing(stream):
            async for batch in stream:
                self._found()
                self._deliver(batch.events)
                # a progress notification: nothing of ours changed up to its revision, so a
                # new stream need not start (and find compacted) further back
                self._revision = max(self._revision, batch.next_revision - 1)

    def _created(self) -> None:
        """etcd acknowledged the watch: the store is following again."""
        self._following = True
        self._found()

    def _deliver(self, events: Iterable[Event]) -> None:
        """Events grouped by revision: one commit, one Change (a txn's document and
        record arrive together). A membership change moves no index: it is not part of
        what the registry holds, and watchers need not wake for it."""
        revision, members, indexed = 0, False, False
        records: dict[str, StoredRecord | None] = {}
        documents: dict[str, bytes | None] = {}

        def flush() -> None:
            nonlocal indexed
            # A commit that moved the index is a Change even if it holds nothing else (a
            # delete of an absent record): the registry may be waiting for its revision.
            if records or documents or indexed:
                self._emit(Change(revision, dict(records), dict(documents)))
            records.clear()
            documents.clear()
            indexed = False

        for event in events:
            if event.kv.mod_revision != revision and revision:
                flush()
            revision = event.kv.mod_revision
            if event.kv.key == self._index_key:
                indexed = True
                continue
            kind, name = self._split(event.kv.key)
            if kind == "services":
                kv = event.kv
                records[name] = (
                    None
                    if event.kind == "delete"
                    else StoredRecord(kv.value, kv.create_revision, kv.mod_revision)
                )
            elif kind == "documents":
                documents[name] = None if event.kind == "delete" else event.kv.value
            elif kind == "members":
                members = True
                if event.kind == "delete":
                    self._members_now.pop(name, None)
                else:
                    self._members_now[name] = event.kv.create_revision
        if revision:
            flush()
            self._revision = revision
        if members:
            self._set_members(self._members_now)

    async def _reload(self) -> bool:
        """The revision to resume from is gone: list everything, hand it on whole; False
        if the listing failed."""
        try:
            snapshot = await self._list()
        except EtcdError as exc:
            self._lost(str(exc), 1)
            return False
        self._emit(
            Change(
                snapshot.revision,
                dict(snapshot.records),
                dict(snapshot.documents),
                whole=True,
            )
        )
        log.info("etcd_reloaded", revision=snapshot.revision, records=len(snapshot.records))
        return True

    def _lost(self, reason: str, failures: int) -> None:
        if self.stale_since is None:
            self.stale_since = time.monotonic()
            log.warning("etcd_unreachable", reason=reason, revision=self._revision)
        elif failures in (5, 20) or failures % 100 == 0:
            log.warning("etcd_still_unreachable", reason=reason, failures=failures)
        self.last_error = reason

    def _found(self) -> None:
        if self.stale_since is not None:
            log.info(
                "etcd_reachable",
                revision=self._revision,
                after_s=round(time.monotonic() - self.stale_since, 3),
            )
            self.stale_since = None
            self.last_error = None
            self.reachable_again_at = time.time()

    def _set_members(self, members: dict[str, int]) -> None:
        self._members_now = dict(members)
        for listener in self._member_listeners:
            listener(dict(members))

    def _split(self, key: bytes) -> tuple[str, str]:
        rest = key[len(self.prefix) :].decode("utf-8", "replace")
        kind, _, name = rest.partition("/")
        return kind, name

    # --- writes -----------------------------------------------------------------------------

    async def put(
        self,
        record_id: str,
        record: bytes,
        document: Document | None = None,
        *,
        drop: Iterable[str] = (),
        expected: int | None = None,
        names: str | None = None,
    ) -> int:
        key = self._services + record_id.encode()
        compare = [] if expected is None else [Compare(key, "mod_revision", "=", expected)]
        success = [Op.put(key, record), Op.put(self._index_key, b"")]
        if document is not None:
            success.insert(0, Op.put(self._documents + document.sha256.encode(), document.body))
        elif names is not None:  # the record names a document it does not bring: is it there?
            compare.append(Compare(self._documents + names.encode(), "version", ">", 0))
        return await self._commit(record_id, expected, compare, success)

    async def delete(
        self, record_id: str, *, drop: Iterable[str] = (), expected: int | None = None
    ) -> int:
        key = self._services + record_id.encode()
        compare = [] if expected is None else [Compare(key, "mod_revision", "=", expected)]
        success = [Op.delete(key), Op.put(self._index_key, b"")]
        return await self._commit(record_id, expected, compare, success)

    async def _commit(
        self, record_id: str, expected: int | None, compare: list[Compare], success: list[Op]
    ) -> int:
        """One txn. Through a leader election (a member lost, about a second) it is tried
        again for up to ELECTION_WAIT: a txn whose first try did land then fails its own
        compare, and the registry, catching up, finds the record as it wanted it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ELECTION_WAIT
        # On a refusal, the record and the index as they are: the Conflict names the
        # registry's last commit, a revision the feed delivers (etcd's own revision may be
        # past every one of ours: another prefix, a member joining), and the registry
        # waits for it before it tries again.
        key = self._services + record_id.encode()
        failure = [Op.range(key), Op.range(self._index_key)]
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                result = await self.client.txn(compare, success, failure)
                break
            except EtcdUnavailable as exc:
                retry = expected is not None and attempt < WRITE_ATTEMPTS
                if not retry or (attempt > 1 and loop.time() > deadline):
                    self.restart_watch()
                    raise StoreError(f"{self.url}: {exc}") from exc
                await asyncio.sleep(RETRY_FIRST * attempt)
            except EtcdError as exc:
                raise StoreError(f"{self.url}: {exc}") from exc
        else:  # pragma: no cover - the loop either breaks or raises
            raise StoreError(f"{self.url}: no attempt left")
        if not result.succeeded:
            found = [kv.mod_revision for response in result.responses for kv in response.kvs]
            raise Conflict(record_id, expected or 0, max(found, default=0))
        return result.revision

    async def put_member(self, name: str, value: bytes, lease: int) -> None:
        await self.client.put(self._members + name.encode(), value, lease=lease)

    # --- documents nobody names -----------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS * random.uniform(0.8, 1.2))
            with contextlib.suppress(EtcdError):
                await self.sweep_once()

    async def sweep_once(self, grace: float = SWEEP_GRACE) -> int:
        """Delete the documents no record has named for `grace` seconds in our view, each in
        a txn that checks no record changed since that view; returns how many went."""
        if self._document_users is None:
            return 0
        users = self._document_users()
        seen = self._revision  # what `users` is as of (the feed is applied synchronously)
        now = time.monotonic()
        revision, kvs = await self.client.range(
            self._documents, prefix_end(self._documents), serializable=False
        )
        unused = {self._split(kv.key)[1] for kv in kvs} - {sha for sha, n in users.items() if n}
        for sha in list(self._unreferenced):
            if sha not in unused:
                del self._unreferenced[sha]
        removed = 0
        for sha in unused:
            first = self._unreferenced.setdefault(sha, now)
            if now - first < grace:
                continue
            unchanged = Compare(
                self._services, "mod_revision", "<", seen + 1, range_end=prefix_end(self._services)
            )
            # It moves the index like every registry commit, so a write that finds the
            # document gone (a Conflict at the index) waits for the feed to say so; and
            # only if the document is still there (another master may have swept it).
            key = self._documents + sha.encode()
            there = Compare(key, "version", ">", 0)
            delete = [Op.delete(key), Op.put(self._index_key, b"")]
            result = await self.client.txn([unchanged, there], delete)
            if result.succeeded:
                removed += 1
                self._unreferenced.pop(sha, None)
        if removed:
            log.info("documents_swept", removed=removed, revision=revision)
        return removed

    # --- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        for task in (self._watcher, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watcher = self._sweeper = None
        await self.client.close()


class _Restart(Exception):
    """The watch is to start again now."""
