"""The one small interface every registry store implements: a durable map that is also an
ordered feed of its changes.

A store keeps each record as its JSON bytes, keyed by service id, and each OpenAPI document
once, keyed by its sha256. Every commit gets the next revision, a number that never goes
back, not even across a restart; each record remembers the revision that created it and the
one that last changed it. The registry's index is the store's revision.

The registry never applies its own writes to memory: it applies the store's feed, its own
commits and (with etcd) other masters' alike, in revision order. So every master's memory
follows the same history. `put` and `delete` return the commit's revision once it is
durable; the feed carries it to the registry before (local stores) or shortly after (etcd).

A write names the revision it expects the record to be at (0: absent), so two masters
writing the same record cannot both win: the loser gets `Conflict` and tries again on what
the winner wrote. That is also what keeps an identical PUT a no-op across masters.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from master.model import Document

log = structlog.get_logger("master.store")


class StoreError(Exception):
    """The store could not do what was asked (disk full, database locked, peer gone)."""


class StoreLocked(StoreError):
    """Another master holds the store (a SQLite file has one writer): start refused."""


class Conflict(StoreError):
    """The record is no longer at the expected revision: someone else wrote it first."""

    def __init__(self, record_id: str, expected: int, revision: int) -> None:
        super().__init__(f"{record_id} moved past revision {expected}")
        self.record_id = record_id
        self.expected = expected
        self.revision = revision  # the store's revision when the write was refused


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored: its JSON, the revision that created it and the last one. In a
    Change from a local store `created` may be 0: "as before" (the revision, for a record
    the registry did not hold)."""

    body: bytes
    created: int
    modified: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything stored, as of `revision`."""

    revision: int
    records: dict[str, StoredRecord] = field(default_factory=dict)
    documents: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Change:
    """One commit, as the feed delivers it: the records it wrote (None: removed) and the
    documents it stored or removed (None), all at `revision`."""

    revision: int
    records: Mapping[str, StoredRecord | None] = field(default_factory=dict)
    documents: Mapping[str, bytes | None] = field(default_factory=dict)
    whole: bool = False  # everything there is (after a reload): what it lacks is gone


Feed = Callable[[Change], None]
"""Takes each change in revision order, synchronously (it only edits memory)."""


class Store(abc.ABC):
    """A durable map from service id to record JSON, and from sha256 to document."""

    feed: Feed | None = None
    last_error: str | None = None  # why the store was last out of reach
    reachable_again_at: float | None = None  # wall time it was last found reachable again

    def subscribe(self, feed: Feed) -> None:
        """Changes after the snapshot `open` returned go to `feed`, in revision order."""
        self.feed = feed

    @abc.abstractmethod
    async def open(self) -> Snapshot:
        """Open (creating if needed) and return everything stored."""

    @abc.abstractmethod
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
        """Store `record` under `record_id`, with `document` if it is new, and remove the
        documents in `drop` (no record names them any more), in one commit; returns its
        revision once durable. With `expected` (the record's last revision, 0 for absent),
        raise Conflict instead if the record is elsewhere; with `names` (the document the
        record names but does not bring), also if that document is gone."""

    @abc.abstractmethod
    async def delete(
        self, record_id: str, *, drop: Iterable[str] = (), expected: int | None = None
    ) -> int:
        """Remove `record_id` (a no-op if absent) and the documents in `drop`; returns the
        commit's revision once durable. `expected` as for `put`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release the store."""

    def describe(self) -> str:
        """A short text for logs and /healthz, e.g. `sqlite:///data/registry.db`."""
        return type(self).__name__

    def stale_for(self) -> float | None:
        """Seconds the store has been out of reach (the view may be behind), else None."""
        return None

    def log_fields(self) -> dict[str, Any]:
        """What the start-up log says of where the data is (the resolved path of a file)."""
        return {}

    def _emit(self, change: Change) -> None:
        """Hand `change` to the feed. A feed that raises is logged, not passed on: the
        exception would end the task that delivers every later change (the SQLite
        flusher, the etcd watch), and every later write would wait on it forever."""
        if self.feed is None:
            return
        try:
            self.feed(change)
        except Exception:
            log.exception("store_feed_failed", revision=change.revision)
