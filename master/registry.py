"""The registry: what is registered, indexed for queries, with the index watchers wait on.

It knows nothing of HTTP. Memory follows the store's change feed: a write is committed to
the store, the feed hands the commit back, in revision order with every other master's
(etcd) or at once (a local store), and only then is it applied to the indexes, the index
moves to the commit's revision and watchers wake. So memory is never a second copy kept
beside the store: every master's view is the same history, at the same index. Writes to
one id take turns here; a write another master won first is a `Conflict`, and is tried
again on what that master wrote.

Each record is encoded to JSON once, when it is written: the same bytes go to the store,
and (with the record's create and modify index added) to the writer's answer and to every
later listing. OpenAPI documents are kept once per distinct content (by sha256).
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final

import msgspec
import structlog

from master.model import (
    KEEP,
    CheckResult,
    Document,
    OpenAPIChange,
    Record,
    Registration,
    Status,
    Time,
    decode_record,
    encode,
    new_record,
    with_transition,
    without_history,
)
from master.shared.logs import Budget
from master.store.base import Change, Conflict, Store, StoredRecord, StoreError

log = structlog.get_logger("master.registry")

Listener = Callable[[Record | None, Record | None], None]
"""Called as (old, new) after every change, also for check results that change nothing
the index counts (so the health scheduler sees a new check url or a removal at once)."""

GZIP_LEVEL: Final = 5  # a full list shrinks about 10x at a fraction of level 9's cost
GZIP_MIN: Final = 1024  # below this, gzip costs more than it saves
ANSWERS_MAX: Final = 1024  # listings kept, per distinct query
ANSWER_BYTES_MAX: Final = 64 << 20  # and their bytes, gzipped copies included
ANSWER_FRESH_SECONDS: Final = 1.0  # how stale a kept listing's last_check may be
LOGGED_WRITES_PER_SECOND: Final = 50  # registrations logged one by one; past it, summed up
CONFLICT_RETRIES: Final = 5  # another master won the record this often in a row: 503
FEED_WAIT_SECONDS: Final = 10.0  # a commit not back through the feed by then: 503


class IdHeld(Exception):
    """The id is held by another instance that is not critical: the holder keeps it."""

    def __init__(self, record_id: str, holder: str, caller: str | None) -> None:
        by = f" by {caller!r}" if caller else ""
        super().__init__(
            f"{record_id!r} is held by {holder!r}, which is not critical; refused{by} "
            "(a takeover is allowed once the holder is critical)"
        )
        self.record_id = record_id
        self.holder = holder


class DocumentsFull(Exception):
    """A new document would take the stored documents past their cap (answered 413)."""

    def __init__(self, size: int, held: int, cap: int) -> None:
        super().__init__(
            f"this OpenAPI document ({size} bytes) would take the documents the master "
            f"holds past {cap} bytes (it holds {held}); see --max-document-bytes"
        )


class TooManyWaiters(Exception):
    """As many blocking queries wait as the master allows: this one is refused (503)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} blocking queries are waiting already, the most allowed; retry")


class FeedBehind(StoreError):
    """Committed, but this master's view has not caught up with it yet (answered 503:
    the same PUT again is then a no-op, or it is applied by the time it arrives)."""


class _Entry:
    """One record as held: the record, its answer bytes (None: re-encode them, after a
    check result changed only `last_check`), and the revisions that created and last
    changed it."""

    __slots__ = ("body", "created", "modified", "record")

    def __init__(self, record: Record, body: bytes | None, created: int, modified: int) -> None:
        self.record = record
        self.body = body
        self.created = created
        self.modified = modified


class _Answer:
    """One query's listing, as built at `index` (and `version`), with its gzipped copy."""

    __slots__ = ("body", "built", "gzipped", "index", "version")

    def __init__(self, index: int, version: int, built: float, body: bytes) -> None:
        self.index = index
        self.version = version
        self.built = built
        self.body = body
        self.gzipped: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped or b"")


class Registry:
    def __init__(
        self,
        store: Store,
        *,
        max_waiters: int = 8_000,
        max_document_bytes: int = 128 << 20,
    ) -> None:
        self._store = store
        self.max_waiters = max_waiters
        self.max_document_bytes = max_document_bytes
        self.waiting = 0  # blocking queries waiting now
        self._entries: dict[str, _Entry] = {}
        self._by_name: dict[str, set[str]] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._by_status: dict[Status, set[str]] = {status: set() for status in Status}
        self._documents: dict[str, Document] = {}
        self._document_users: dict[str, int] = {}
        # the documents writes in flight name, bring (sha -> its size) and drop, until the
        # feed has applied them: a write decides what to drop and whether to send a
        # document before it commits, and another id's write may commit in between (the
        # SQLite queue, etcd), so those decisions count what is in flight too
        self._naming: dict[str, int] = {}
        self._incoming: dict[str, tuple[int, int]] = {}
        self._dropping: dict[str, int] = {}
        # ids being written, each with the futures of writers waiting their turn
        self._busy: dict[str, list[asyncio.Future[None]]] = {}
        # records this master is writing, by id: (the bytes sent, the record they encode),
        # so the feed bringing them back need not decode them again
        self._own: dict[str, tuple[bytes, Record]] = {}
        self._catching_up: list[tuple[int, asyncio.Future[None]]] = []
        self._listeners: list[Listener] = []
        self._index = 0
        self._changed: asyncio.Future[None] | None = None  # made when someone waits
        self._version = 0  # moves on every change in memory, also those the index ignores
        # each service name's last change (the revision a record of it moved or went), and
        # the watchers of one name: a blocking query on a name wakes only for that name
        self._name_index: dict[str, int] = {}
        self._name_changed: dict[str, asyncio.Future[None]] = {}
        self._names_touched: set[str] = set()
        self._transitions: dict[Status, int] = {}
        self._answers: OrderedDict[tuple[object, ...], _Answer] = OrderedDict()
        self._answer_bytes = 0
        self._write_logs = Budget(log, "service_writes", LOGGED_WRITES_PER_SECOND)
        # (when, why) the last write failed, until one succeeds: /healthz says so
        self.write_failure: tuple[float, str] | None = None

    # --- loading and listening ---------------------------------------------------------

    async def load(self) -> int:
        """Fill the registry from the store and follow its feed; returns how many records
        were loaded."""
        snapshot = await self._store.open()
        for sha, body in snapshot.documents.items():
            self._documents[sha] = Document(sha, body)
        for record_id, stored in snapshot.records.items():
            self._apply_record(record_id, stored, snapshot.revision, notify=True)
        for record_id in snapshot.records:
            entry = self._entries.get(record_id)
            if entry is not None:  # a name's index is its newest record's, at load
                name = entry.record.name
                self._name_index[name] = max(self._name_index.get(name, 0), entry.modified)
        self._names_touched.clear()
        for sha in [s for s in self._documents if s not in self._document_users]:
            del self._documents[sha]  # a document no record names: not held, nor counted
        self._index = snapshot.revision
        self._store.subscribe(self._apply)
        return len(self._entries)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- reads -------------------------------------------------------------------------

    @property
    def index(self) -> int:
        return self._index

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, record_id: str) -> Record | None:
        entry = self._entries.get(record_id)
        return entry.record if entry is not None else None

    def records(self) -> Iterable[Record]:
        return (entry.record for entry in self._entries.values())

    def indexes(self, record_id: str) -> tuple[int, int]:
        """The revisions that created the record and last changed it."""
        entry = self._entries[record_id]
        return entry.created, entry.modified

    def query(
        self,
        tags: Iterable[str] = (),
        name: str | None = None,
        status: Status | None = None,
    ) -> list[Record]:
        """Records matching every filter, by id. Costs the size of the smallest index set."""
        return [self._entries[i].record for i in self._query_ids(tags, name, status)]

    def _query_ids(self, tags: Iterable[str], name: str | None, status: Status | None) -> list[str]:
        candidates: list[set[str]] = [self._by_tag.get(tag, set()) for tag in tags]
        if name is not None:
            candidates.append(self._by_name.get(name, set()))
        if status is not None:
            candidates.append(self._by_status[status])
        if not candidates:
            return sorted(self._entries)
        candidates.sort(key=len)
        smallest, *rest = candidates
        if not rest:
            return sorted(smallest)
        return sorted(i for i in smallest if all(i in other for other in rest))

    def encoded(self, record: Record) -> bytes:
        """The record's JSON (without its document), with its create and modify index."""
        return self._body(record.id)

    def _body(self, record_id: str) -> bytes:
        entry = self._entries[record_id]
        if entry.body is None:
            # Re-encoded after a check result: without the timeline, which answers leave out
            # anyway and which would cost several times the rest of the record.
            record = entry.record
            if record.history:
                record = msgspec.structs.replace(record, history=())
            entry.body = _answer(encode(record), entry.created, entry.modified)
        return entry.body

    def listing(
        self,
        tags: Iterable[str] = (),
        name: str | None = None,
        status: Status | None = None,
        *,
        gzipped: bool = False,
    ) -> tuple[bytes, bool]:
        """`{"index": N, "services": [...]}` for a query, as JSON; gzipped if asked and
        worth it (then True).

        Answers are kept per query until the index moves or, for what only a check result
        changed (`last_check`), for at most ANSWER_FRESH_SECONDS: so a thousand watchers
        asking the same question cost one build, and a check that only confirms a status
        shows within a second."""
        key = (tuple(tags), name, status)
        now = time.monotonic()
        answer = self._answers.get(key)
        if (
            answer is None
            or answer.index != self._index
            or (answer.version != self._version and now - answer.built > ANSWER_FRESH_SECONDS)
        ):
            if answer is not None:
                self._answer_bytes -= answer.size
            ids = sorted(self._entries) if key == ((), None, None) else self._query_ids(*key)
            body = self._wrap(b",".join([self._body(i) for i in ids]))
            answer = self._answers[key] = _Answer(self._index, self._version, now, body)
            self._answers.move_to_end(key)  # rebuilt: the most recently asked, not the oldest
            self._answer_bytes += answer.size
            self._trim_answers(keep=key)
        else:
            self._answers.move_to_end(key)
        if not gzipped or len(answer.body) < GZIP_MIN:
            return answer.body, False
        if answer.gzipped is None:
            answer.gzipped = gzip.compress(answer.body, GZIP_LEVEL)
            self._answer_bytes += len(answer.gzipped)
        return answer.gzipped, True

    def _trim_answers(self, keep: tuple[object, ...]) -> None:
        """Least recently asked first, down to the bounds (the newest one always stays)."""
        while len(self._answers) > 1 and (
            len(self._answers) > ANSWERS_MAX or self._answer_bytes > ANSWER_BYTES_MAX
        ):
            key, old = next(iter(self._answers.items()))
            if key == keep:
                break
            del self._answers[key]
            self._answer_bytes -= old.size

    def _wrap(self, items: bytes) -> bytes:
        return b'{"index":%d,"services":[%s]}' % (self._index, items)

    def document(self, sha256: str | None) -> Document | None:
        return self._documents.get(sha256) if sha256 is not None else None

    def with_document(self, record: Record) -> tuple[bytes, bytes, bytes]:
        """The record's JSON with `"openapi": document` (or null) added, in three pieces
        to write one after the other: a document of megabytes is sent as it is held, not
        copied into a new string (each copy of 7 MiB cost the loop milliseconds)."""
        document = self.document(record.openapi_sha256)
        head = self._body(record.id)[:-1] + b',"openapi":'
        return head, document.body if document else b"null", b"}"

    def status_counts(self) -> dict[Status, int]:
        return {status: len(ids) for status, ids in self._by_status.items()}

    def tag_counts(self) -> dict[str, int]:
        return {tag: len(ids) for tag, ids in sorted(self._by_tag.items())}

    def document_bytes(self) -> int:
        return sum(len(document.body) for document in self._documents.values())

    def _held_document_bytes(self) -> int:
        """What the documents held take, and those writes in flight bring (the cap's
        count: concurrent PUTs of new documents must not each find the room free)."""
        incoming = sum(
            size for sha, (_, size) in self._incoming.items() if sha not in self._documents
        )
        return self.document_bytes() + incoming

    def instances(self, name: str) -> int:
        """How many records carry this service name."""
        return len(self._by_name.get(name, ()))

    def names(self) -> dict[str, list[str]]:
        """Each service name with the union of its instances' tags (the Consul catalog view)."""
        result: dict[str, list[str]] = {}
        for name in sorted(self._by_name):
            tags: dict[str, None] = {}
            for record_id in sorted(self._by_name[name]):
                tags.update(dict.fromkeys(self._entries[record_id].record.tags))
            result[name] = list(tags)
        return result

    async def wait(self, index: int, timeout: float) -> int:
        """Return once the index is past `index`, or after `timeout`; returns the index.

        An `index` ahead of ours (a store replaced under the master) answers at once, so
        the watcher resynchronizes instead of waiting on a number that is gone.
        """
        if index != self._index:
            return self._index
        if self.waiting >= self.max_waiters:
            raise TooManyWaiters(self.max_waiters)
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._changed)
        except TimeoutError:
            pass
        finally:
            self.waiting -= 1
        return self._index

    def wake_all(self) -> None:
        """Answer every blocking query now (at shutdown), without moving the index."""
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set_result(None)

    def wake_everyone(self) -> None:
        """At shutdown: the watchers of every name too."""
        self.wake_all()
        for name in list(self._name_changed):
            self._wake_name(name)

    def name_index(self, name: str) -> int:
        """The revision at which a record of `name` last changed (0: never, here)."""
        return self._name_index.get(name, 0)

    async def wait_name(self, name: str, index: int, timeout: float) -> int:
        """`wait`, for one service name: returns once that name's index passes `index`, or
        after `timeout`. Consul's rule: a client may pass the index of another answer (the
        catalog's), above this name's; it then waits for this name's next change."""
        current = self._name_index.get(name, 0)
        if current > index:
            return current
        if self.waiting >= self.max_waiters:
            raise TooManyWaiters(self.max_waiters)
        changed = self._name_changed.get(name)
        if changed is None:
            changed = self._name_changed[name] = asyncio.get_running_loop().create_future()
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(changed)
        except TimeoutError:
            pass
        finally:
            self.waiting -= 1
        return self._name_index.get(name, 0)

    def _wake_name(self, name: str) -> None:
        changed = self._name_changed.pop(name, None)
        if changed is not None:
            changed.set_result(None)

    # --- writes ------------------------------------------------------------------------

    async def put(self, registration: Registration, openapi: OpenAPIChange) -> tuple[Record, bool]:
        """Register or replace; returns the stored record and whether anything changed
        (its JSON is `encoded(record)`). A PUT identical to what is stored changes
        nothing, not even the index."""
        record_id = registration.id
        turn = self._claim(record_id)
        if turn is not None:
            await self._wait_turn(record_id, turn)
        try:
            for _ in range(CONFLICT_RETRIES):
                entry = self._entries.get(record_id)
                old = entry.record if entry is not None else None
                registration = self._held(old, registration)
                new_document: Document | None = None
                if isinstance(openapi, Document):
                    digest: str | None = openapi.sha256
                    if digest not in self._documents or digest in self._dropping:
                        # (one a write in flight drops is sent again: that drop may
                        # commit first)
                        new_document = openapi
                    if digest not in self._documents and digest not in self._incoming:
                        held = self._held_document_bytes() - sum(
                            len(self._documents[sha].body)
                            for sha in self._orphaned(old, digest)
                            if sha in self._documents
                        )  # what this write lets go of makes room
                        if held + len(openapi.body) > self.max_document_bytes:
                            raise DocumentsFull(len(openapi.body), held, self.max_document_bytes)
                elif openapi is KEEP:
                    digest = old.openapi_sha256 if old else None
                    if digest is not None and digest not in self._documents:
                        digest = None  # gone meanwhile (a race of masters): say so honestly
                else:
                    digest = None
                unchanged = old is not None and old.same_registration(registration)
                if unchanged and old is not None and old.openapi_sha256 == digest:
                    return old, False
                new = self._registered(old, registration, digest)
                try:
                    await self._write(entry, new, new_document)
                except Conflict as exc:
                    await self._caught_up(exc.revision)  # see what won, then try on it
                    continue
                if self._write_logs.spend():
                    event = "service_registered" if old is None else "service_updated"
                    log.info(event, service_id=record_id, name=new.name)
                return self._entries[record_id].record, True
            raise StoreError(f"{record_id}: other masters kept writing it; retry")
        finally:
            self._release(record_id)

    async def delete(
        self,
        record_id: str,
        *,
        event: str = "service_deregistered",
        instance: str | None = None,
    ) -> tuple[Record, bytes] | None:
        """Remove a service; returns what was removed and its JSON as answered (with the
        revisions that created and last changed it), or None if it was not registered.
        With `instance` (a sidecar leaving), only if that instance holds it."""
        turn = self._claim(record_id)
        if turn is not None:
            await self._wait_turn(record_id, turn)
        try:
            for _ in range(CONFLICT_RETRIES):
                entry = self._entries.get(record_id)
                if entry is None:
                    return None
                old = entry.record
                if instance is not None and old.instance and old.instance != instance:
                    log.warning(
                        "deregistration_refused",
                        service_id=record_id,
                        holder=old.instance,
                        caller=instance,
                    )
                    raise IdHeld(record_id, old.instance, instance)
                answer = self._body(record_id)
                drop = self._orphaned(old, None)
                self._in_flight(None, None, drop, 1)
                try:
                    try:
                        revision = await self._store.delete(
                            record_id, drop=drop, expected=entry.modified
                        )
                    except Conflict as exc:
                        await self._caught_up(exc.revision)
                        continue
                    except StoreError as exc:
                        self.write_failure = (time.time(), str(exc))
                        raise
                    self.write_failure = None
                    await self._caught_up(revision)
                finally:
                    self._in_flight(None, None, drop, -1)
                log.info(event, service_id=record_id, name=old.name)
                return old, answer
            raise StoreError(f"{record_id}: other masters kept writing it; retry")
        finally:
            self._release(record_id)

    async def record_check(
        self, record_id: str, check_url: str, status: Status, result: CheckResult
    ) -> Record | None:
        """Store a check's outcome (status already through the thresholds).

        A changed status is made durable and moves the index; a result that only confirms
        the status is kept in memory and wakes nobody. A result for a check url the service
        no longer has (re-registered while the probe ran, here or at another master) is
        dropped.
        """
        turn = self._claim(record_id)
        if turn is not None:
            await self._wait_turn(record_id, turn)
        try:
            entry = self._entries.get(record_id)
            if entry is None or entry.record.check_url != check_url:
                return None
            old = entry.record
            if old.status is Status.DRAINING:
                status = Status.DRAINING  # on its way out: checks no longer move it
            if status == old.status:
                new = msgspec.structs.replace(old, last_check=result)
                self._install(entry, new, None, entry.created, entry.modified, notify=False)
                return new
            new = with_transition(old, status, result.output, result.duration_ms)
            new = msgspec.structs.replace(new, last_check=result)
            try:
                await self._write(entry, new, None)
            except Conflict:
                return None  # changed elsewhere meanwhile: the next check sees what is there
            self._transitions[status] = self._transitions.get(status, 0) + 1
            log.info(
                "check_status_changed",
                service_id=record_id,
                old=old.status.value,
                new=status.value,
                output=result.output[:200],
            )
            return self._entries[record_id].record
        finally:
            self._release(record_id)

    @staticmethod
    def _registered(old: Record | None, registration: Registration, digest: str | None) -> Record:
        """The record a PUT makes: a replace keeps the status and its story unless the check
        url moved (then not checked yet), or the sidecar says it is draining."""
        now = Time.now()
        check_url = registration.check.url if registration.check else None
        if registration.draining:
            status, reason = Status.DRAINING, "draining: the sidecar is taking it out"
        elif old is not None and old.check_url == check_url and old.status is not Status.DRAINING:
            status, reason = old.status, old.status_reason
        elif registration.check:
            status, reason = Status.UNKNOWN, "not checked yet"
        else:
            status, reason = Status.PASSING, "no check: passing while registered"
        same = old is not None and old.check_url == check_url
        record = new_record(
            registration,
            status=old.status if old is not None else status,
            registered_at=old.registered_at if old else now,
            updated_at=now,
            status_changed_at=old.status_changed_at if old else now,
            status_reason=old.status_reason if old else reason,
            flapping=old.flapping if old else False,
            openapi_sha256=digest,
            last_check=old.last_check if same and old is not None else None,
            history=old.history if old else (),
        )
        if old is None:
            return msgspec.structs.replace(record, status=status, status_reason=reason)
        if status is not old.status:
            return with_transition(record, status, reason, 0.0)
        return record

    def transitions(self) -> dict[Status, int]:
        """Status changes this master made, by the status changed to (a counter)."""
        return dict(self._transitions)

    def _held(self, old: Record | None, registration: Registration) -> Registration:
        """The ownership rule: who holds an id keeps it while it is not critical. A PUT
        that names no instance keeps the stored holder (an operator's edit)."""
        if old is None or not old.instance:
            return registration
        caller = registration.instance
        if caller is None:
            return msgspec.structs.replace(registration, instance=old.instance)
        if caller == old.instance:
            return registration
        if old.status is not Status.CRITICAL:
            log.warning("id_conflict", service_id=old.id, holder=old.instance, caller=caller)
            raise IdHeld(old.id, old.instance, caller)
        log.info("service_taken_over", service_id=old.id, holder=old.instance, by=caller)
        return registration

    # --- the feed ----------------------------------------------------------------------

    def _apply(self, change: Change) -> None:
        """One commit from the store, in revision order: documents first (a record may
        name one stored in the same commit), then records; then the index moves."""
        if change.whole:
            self._forget_all_but(change)
        for sha, body in change.documents.items():
            if body is None:
                if not self._document_users.get(sha):
                    self._documents.pop(sha, None)
            else:
                self._documents[sha] = Document(sha, body)
        for record_id, stored in change.records.items():
            self._apply_record(record_id, stored, change.revision, notify=True)
        for name in self._names_touched:  # also those a reload removed (`whole`)
            self._name_index[name] = change.revision
            self._wake_name(name)
        self._names_touched.clear()
        if change.revision > self._index:
            self._index = change.revision
            self.wake_all()
            self._wake_catching_up()

    def _apply_record(
        self, record_id: str, stored: StoredRecord | None, revision: int, *, notify: bool
    ) -> None:
        entry = self._entries.get(record_id)
        if stored is None:
            if entry is not None:
                self._install(entry, None, None, 0, 0, notify=notify)
            return
        own = self._own.get(record_id)
        if own is not None and own[0] == stored.body:
            record = own[1]  # our own write coming back: no need to decode it again
        else:
            try:
                record = decode_record(stored.body)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.warning("store_row_skipped", service_id=record_id, reason=str(exc))
                return
            if record.id != record_id:
                log.warning("store_row_skipped", service_id=record_id, reason="id differs")
                return
        created = stored.created or (entry.created if entry is not None else stored.modified)
        body = _answer(stored.body, created, stored.modified)
        self._install(entry, record, body, created, stored.modified, notify=notify)

    def _forget_all_but(self, change: Change) -> None:
        """A reload: what the store no longer holds is removed (with the listeners told)."""
        for record_id in [i for i in self._entries if i not in change.records]:
            self._install(self._entries[record_id], None, None, 0, 0)
        for sha in [s for s in self._documents if s not in change.documents]:
            if not self._document_users.get(sha):
                del self._documents[sha]

    def document_users(self) -> dict[str, int]:
        """How many records name each document (for a store's sweep of unused ones)."""
        return dict(self._document_users)

    async def _caught_up(self, revision: int) -> None:
        """Wait until the feed has applied `revision` (a local store: already has)."""
        if self._index >= revision:
            return
        done = asyncio.get_running_loop().create_future()
        self._catching_up.append((revision, done))
        try:
            async with asyncio.timeout(FEED_WAIT_SECONDS):
                await done
        except TimeoutError:
            raise FeedBehind(
                f"revision {revision} is committed, but this master's view is at "
                f"{self._index}: the store's change feed is behind"
            ) from None

    def _wake_catching_up(self) -> None:
        waiting, self._catching_up = self._catching_up, []
        for revision, done in waiting:
            if revision <= self._index:
                if not done.done():
                    done.set_result(None)
            else:
                self._catching_up.append((revision, done))

    # --- internals ---------------------------------------------------------------------

    async def _write(self, entry: _Entry | None, new: Record, document: Document | None) -> None:
        """Commit `new` (expecting the record where `entry` has it) and wait for the feed
        to apply it. The JSON is encoded once, for the store and every later answer."""
        old = entry.record if entry is not None else None
        body = encode(new)
        sha = new.openapi_sha256
        drop = self._orphaned(old, sha)
        self._in_flight(sha, document, drop, 1)
        try:
            self._own[new.id] = (body, new)
            try:
                names = sha if document is None else None
                revision = await self._store.put(
                    new.id,
                    body,
                    document,
                    drop=drop,
                    expected=entry.modified if entry is not None else 0,
                    names=names,
                )
            except Conflict:
                raise
            except StoreError as exc:
                self.write_failure = (time.time(), str(exc))
                raise
            else:
                self.write_failure = None
            finally:
                self._own.pop(new.id, None)
            await self._caught_up(revision)
        finally:
            self._in_flight(sha, document, drop, -1)

    def _orphaned(self, old: Record | None, digest: str | None) -> tuple[str, ...]:
        """The document `old` held that nobody holds once it holds `digest` instead (nor
        a write in flight names)."""
        sha = old.openapi_sha256 if old is not None else None
        if (
            sha is None
            or sha == digest
            or self._document_users.get(sha, 0) > 1
            or self._naming.get(sha)
        ):
            return ()
        return (sha,)

    def _in_flight(
        self, sha: str | None, document: Document | None, drop: tuple[str, ...], step: int
    ) -> None:
        """Count a write's documents in (step 1) or out (-1) of flight. Out, a document
        no record names and no write in flight brings is let go of (its write failed)."""
        if sha is not None:
            _count(self._naming, sha, step)
        if document is not None:
            count, size = self._incoming.get(document.sha256, (0, len(document.body)))
            if count + step:
                self._incoming[document.sha256] = (count + step, size)
            else:
                del self._incoming[document.sha256]
        for dropped in drop:
            _count(self._dropping, dropped, step)
        if (
            step < 0
            and sha is not None
            and not self._naming.get(sha)
            and not self._document_users.get(sha)
        ):
            self._documents.pop(sha, None)

    def _claim(self, record_id: str) -> asyncio.Future[None] | None:
        """Take the id for one write; None when it was free (nearly always: no future, no
        await), else the future to await until the writer before hands it over."""
        waiters = self._busy.get(record_id)
        if waiters is None:
            self._busy[record_id] = []
            return None
        turn = asyncio.get_running_loop().create_future()
        waiters.append(turn)
        return turn

    async def _wait_turn(self, record_id: str, turn: asyncio.Future[None]) -> None:
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release(record_id)  # handed the id, then cancelled: hand it on
            raise

    def _release(self, record_id: str) -> None:
        waiters = self._busy[record_id]
        while waiters and waiters[0].done():  # its writer was cancelled while waiting
            waiters.pop(0)
        if waiters:
            waiters.pop(0).set_result(None)
        else:
            del self._busy[record_id]

    def close(self) -> None:
        """At shutdown: say what the log budget left out."""
        self._write_logs.close()

    def _install(
        self,
        entry: _Entry | None,
        new: Record | None,
        body: bytes | None,
        created: int,
        modified: int,
        *,
        notify: bool = True,
    ) -> None:
        old = entry.record if entry is not None else None
        self._version += 1
        if notify:  # a change the index counts: the names it touched move too
            self._names_touched.update(r.name for r in (old, new) if r is not None)
        self._count_document_users(old, new)
        if old is not None:
            self._unindex(old)
        if new is None:
            del self._entries[old.id]  # type: ignore[union-attr]
        else:
            if entry is None:
                self._entries[new.id] = _Entry(new, body, created, modified)
            else:
                entry.record, entry.body, entry.created, entry.modified = (
                    new,
                    body,
                    created,
                    modified,
                )
            self._index_record(new)
        if notify:
            for listener in self._listeners:
                listener(old, new)

    def _index_record(self, record: Record) -> None:
        self._by_name.setdefault(record.name, set()).add(record.id)
        for tag in record.tags:
            self._by_tag.setdefault(tag, set()).add(record.id)
        self._by_status[record.status].add(record.id)

    def _unindex(self, record: Record) -> None:
        _discard(self._by_name, record.name, record.id)
        for tag in record.tags:
            _discard(self._by_tag, tag, record.id)
        self._by_status[record.status].discard(record.id)

    def _count_document_users(self, old: Record | None, new: Record | None) -> None:
        """A document lives while a record names it; the last one to let go drops it."""
        old_sha = old.openapi_sha256 if old is not None else None
        new_sha = new.openapi_sha256 if new is not None else None
        if old_sha == new_sha:
            return
        if new_sha is not None:
            self._document_users[new_sha] = self._document_users.get(new_sha, 0) + 1
        if old_sha is not None:
            users = self._document_users[old_sha] - 1
            if users:
                self._document_users[old_sha] = users
            else:
                del self._document_users[old_sha]
                if not self._naming.get(old_sha):  # else a write in flight will name it
                    self._documents.pop(old_sha, None)


def _answer(stored: bytes, created: int, modified: int) -> bytes:
    """A record's JSON as answered: as stored but for its history (served on its own), with
    the revisions that created it and last changed it (Consul's CreateIndex and
    ModifyIndex), which the stored bytes cannot hold (known only once committed)."""
    head = without_history(stored)[:-1]
    return b'%s,"create_index":%d,"modify_index":%d}' % (head, created, modified)


def _count(counts: dict[str, int], key: str, step: int) -> None:
    count = counts.get(key, 0) + step
    if count:
        counts[key] = count
    else:
        counts.pop(key, None)


def _discard(index: dict[str, set[str]], key: str, record_id: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(record_id)
        if not ids:
            del index[key]
