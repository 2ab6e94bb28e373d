"""`memory://`: nothing survives a restart. For tests, demos and throwaway registries."""

from __future__ import annotations

from collections.abc import Iterable

from master.model import Document
from master.store.base import Snapshot, Store


class MemoryStore(Store):
    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}
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
    ) -> int:
        if document is not None:
            self._documents[document.sha256] = document.body
        for sha in drop:
            self._documents.pop(sha, None)
        self._records[record_id] = bytes(record)  # bytes are immutable: a snapshot already
        self._revision += 1
        return self._revision

    async def delete(self, record_id: str, *, drop: Iterable[str] = ()) -> int:
        for sha in drop:
            self._documents.pop(sha, None)
        self._records.pop(record_id, None)
        self._revision += 1
        return self._revision

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return "memory://"
