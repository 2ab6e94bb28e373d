"""`sqlite:///PATH`: one local file, durable on every acknowledged write.

Every sqlite3 call runs in one writer thread, so the event loop never waits on the disk.
Writes are grouped: while one transaction commits, new writes queue up, and the next
transaction takes them all. One fsync then acknowledges many PUTs, which is what lets
`synchronous=FULL` (a 200 means committed) keep up with many concurrent writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from master.store.base import Store, StoreError

log = structlog.get_logger("master.store.sqlite")

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000  # another process reading the file (a backup, the sqlite3 shell)
URL_FORM = "sqlite:///RELATIVE/PATH or sqlite:////ABSOLUTE/PATH"

T = TypeVar("T")


@dataclass(slots=True)
class _Write:
    record_id: str
    body: str | None  # None deletes
    done: asyncio.Future[None]


class SQLiteStore(Store):
    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.url = url
        self.commits = 0  # transactions committed
        self.writes = 0  # puts and deletes those transactions held
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None  # used only in the writer thread
        self._pending: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"bad SQLite store URL {url!r}: use {URL_FORM}")
        path = parts.path[1:]  # the third slash ends the (empty) host
        if not path or path.endswith("/"):
            raise ValueError(f"SQLite store URL {url!r} names no file: use {URL_FORM}")
        return cls(Path(path), url)

    def describe(self) -> str:
        return self.url

    async def open(self) -> dict[str, dict[str, Any]]:
        return await self._in_writer(self._open_sync)

    async def put(self, record_id: str, body: Mapping[str, Any]) -> None:
        # Encoded now, so a caller mutating its dict later cannot change what is stored;
        # ASCII, so a lone surrogate from a JSON escape cannot fail the UTF-8 encoding.
        await self._submit(record_id, json.dumps(body, separators=(",", ":")))

    async def delete(self, record_id: str) -> None:
        await self._submit(record_id, None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await self._flusher
        if self._conn is not None:
            await self._in_writer(self._conn.close)
            self._conn = None
        self._executor.shutdown()

    # --- on the event loop ---------------------------------------------------------------

    async def _in_writer(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def _submit(self, record_id: str, body: str | None) -> None:
        if self._closed or self._conn is None:
            raise StoreError(f"{self.url} is {'closed' if self._closed else 'not open'}")
        write = _Write(record_id, body, asyncio.get_running_loop().create_future())
        self._pending.append(write)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await write.done

    async def _flush(self) -> None:
        """Commit everything pending in one transaction, again until nothing is left."""
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._in_writer(self._commit_sync, batch)
            except StoreError as exc:
                for write in batch:
                    if not write.done.done():
                        write.done.set_exception(exc)
                continue
            self.commits += 1
            self.writes += len(batch)
            for write in batch:
                if not write.done.done():
                    write.done.set_result(None)
        self._flusher = None

    # --- in the writer thread ------------------------------------------------------------

    def _open_sync(self) -> dict[str, dict[str, Any]]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            rows = self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        records: dict[str, dict[str, Any]] = {}
        for record_id, text in rows:
            try:
                body = json.loads(text)
            except ValueError as exc:
                log.warning("store_row_skipped", service_id=record_id, reason=str(exc))
                continue
            if not isinstance(body, dict):
                log.warning("store_row_skipped", service_id=record_id, reason="not an object")
                continue
            records[record_id] = body
        return records

    def _prepare(self, conn: sqlite3.Connection) -> list[tuple[str, str]]:
        """Set the pragmas, create or check the schema, and read every row."""
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, written by a newer master; "
                    f"this one knows up to {SCHEMA_VERSION}: upgrade it or use another file"
                )
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS services (id TEXT PRIMARY KEY, body TEXT NOT NULL)"
                )
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            return conn.execute("SELECT id, body FROM services").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    def _commit_sync(self, batch: list[_Write]) -> None:
        assert self._conn is not None
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in batch:  # in queue order, so the last write to an id wins
                if write.body is None:
                    conn.execute("DELETE FROM services WHERE id = ?", (write.record_id,))
                else:
                    conn.execute(
                        "INSERT OR REPLACE INTO services (id, body) VALUES (?, ?)",
                        (write.record_id, write.body),
                    )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise StoreError(f"commit to {self.path} failed: {exc}") from exc
