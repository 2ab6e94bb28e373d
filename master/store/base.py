"""The one small interface every registry store implements.

A store keeps each record as its JSON bytes, keyed by service id, and each OpenAPI document
once, keyed by its sha256. It knows nothing of HTTP or of the registry's indexes; the
registry owns the in-memory view and calls the store to make each change durable. Every
change gets the next revision, a number that never goes back, not even across a restart:
the registry's index is that revision. `put` and `delete` return only once the change is
committed.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from master.model import Document


class StoreError(Exception):
    """The store could not do what was asked (disk full, database locked, peer gone)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything stored, as of `revision`."""

    revision: int
    records: dict[str, bytes] = field(default_factory=dict)
    documents: dict[str, bytes] = field(default_factory=dict)


class Store(abc.ABC):
    """A durable map from service id to record JSON, and from sha256 to document."""

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
    ) -> int:
        """Store `record` under `record_id`, with `document` if it is new, and remove the
        documents in `drop` (no record names them any more), in one commit; returns its
        revision once durable."""

    @abc.abstractmethod
    async def delete(self, record_id: str, *, drop: Iterable[str] = ()) -> int:
        """Remove `record_id` (a no-op if absent) and the documents in `drop`; returns the
        commit's revision once durable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release the store."""

    def describe(self) -> str:
        """A short text for logs and /healthz, e.g. `sqlite:///data/registry.db`."""
        return type(self).__name__

    def log_fields(self) -> dict[str, Any]:
        """What the start-up log says of where the data is (the resolved path of a file)."""
        return {}
