"""`memory://`: nothing survives a restart. For tests, demos and throwaway registries."""

from __future__ import annotations

from collections.abc import Iterable

from master.model import Document
from master.store.base import Change, Conflict, Snapshot, Store, StoredRecord


class MemoryStore(Store):
    def __init__(self) -> None:
        self._records: dict[str, StoredRecord] = {}
        self._documents: dict[str, bytes] = {}
        self._revision = 0

    async def open(self) -> Snapshot:
        return Snapshot(self._revision, dict(self._records), dict(self._documents))

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
        old = self._check(record_id, expected)
        self._revision += 1
        stored = StoredRecord(bytes(record), old.created if old else self._revision, self._revision)
        self._records[record_id] = stored
        documents = self._documents_change(document, drop)
        self._emit(Change(self._revision, {record_id: stored}, documents))
        return self._revision

    async def delete(
        self, record_id: str, *, drop: Iterable[str] = (), expected: int | None = None
    ) -> int:
        self._check(record_id, expected)
        self._revision += 1
        self._records.pop(record_id, None)
        documents = self._documents_change(None, drop)
        self._emit(Change(self._revision, {record_id: None}, documents))
        return self._revision

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return "memory://"

    def _check(self, record_id: str, expected: int | None) -> StoredRecord | None:
        old = self._records.get(record_id)
        if expected is not None and (old.modified if old else 0) != expected:
            raise Conflict(record_id, expected, self._revision)
        return old

    def _documents_change(
        self, document: Document | None, drop: Iterable[str]
    ) -> dict[str, bytes | None]:
        change: dict[str, bytes | None] = {}
        if document is not None:
            self._documents[document.sha256] = change[document.sha256] = document.body
        for sha in drop:
            self._documents.pop(sha, None)
            change[sha] = None
        return change
