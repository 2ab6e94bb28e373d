"""`sqlite:///PATH`: one local file, durable on every acknowledged write.

`sqlite:///relative/path` is relative to the working directory, `sqlite:////abs/path`
absolute (the usual convention); the resolved path is logged at open.

Every sqlite3 call runs in one writer thread, so the event loop never waits on the disk.
Writes are grouped: while one transaction commits, new writes queue up, and the next
transaction takes them all. One fsync then acknowledges many PUTs, which is what lets
`synchronous=FULL` (a 200 means committed) keep up with many concurrent writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import structlog

from master.model import Document, FieldError, canonical_document, encode, loads_json
from master.store.base import Change, Snapshot, Store, StoredRecord, StoreError, StoreLocked

log = structlog.get_logger("master.store.sqlite")

SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 5000  # another process reading the file (a backup, the sqlite3 shell)
URL_FORM = "sqlite:///RELATIVE/PATH or sqlite:////ABSOLUTE/PATH"
# Version 2 keeps each OpenAPI document once (by sha256) and persists the revision, so the
# registry index never starts again at 1; version 3 also keeps the revision that created
# each record. Older files are upgraded in place at open.
SCHEMA_V2 = (
    "CREATE TABLE IF NOT EXISTS services (id TEXT PRIMARY KEY, body BLOB NOT NULL, "
    "revision INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS documents (sha256 TEXT PRIMARY KEY, body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

# A new row is created at its revision; an existing one keeps the revision that created it.
_UPSERT = (
    "INSERT INTO services (id, body, revision, created) VALUES (?1, ?2, ?3, ?3) "
    "ON CONFLICT (id) DO UPDATE SET body = excluded.body, revision = excluded.revision"
)
_CREATED_COLUMN = "created INTEGER NOT NULL DEFAULT 0"
_PUT_DOCUMENT = "INSERT OR REPLACE INTO documents (sha256, body) VALUES (?, ?)"
_DROP_DOCUMENT = "DELETE FROM documents WHERE sha256 = ?"

T = TypeVar("T")


@dataclass(slots=True)
class _Write:
    record_id: str
    body: bytes | None  # None deletes
    document: Document | None
    drop: tuple[str, ...]
    revision: int
    done: asyncio.Future[int]

    def change(self) -> Change:
        documents: dict[str, bytes | None] = dict.fromkeys(self.drop)
        if self.document is not None:
            documents[self.document.sha256] = self.document.body
        # created 0: as the registry knows it (the revision, for a record new to it)
        record = None if self.body is None else StoredRecord(self.body, 0, self.revision)
        return Change(self.revision, {self.record_id: record}, documents)


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
        self._revision = 0  # the last one handed out; committed ones are at most this
        self._lock: IO[str] | None = None

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """`sqlite:///relative/path` or `sqlite:////absolute/path`, the usual convention."""
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"bad SQLite store URL {url!r}: use {URL_FORM}")
        path = parts.path[1:]  # the third slash ends the (empty) host
        if not path or path.endswith("/"):
            raise ValueError(f"SQLite store URL {url!r} names no file: use {URL_FORM}")
        return cls(Path(path), url)

    def describe(self) -> str:
        return self.url

    async def open(self) -> Snapshot:
        snapshot = await self._in_writer(self._open_sync)
        self._revision = snapshot.revision
        return snapshot

    def log_fields(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve())}

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
        # `expected` needs no check here: one master writes a file (the others are refused
        # at start), and the registry takes one write at a time per id, so its view is
        # always the file's.
        return await self._submit(record_id, bytes(record), document, tuple(drop))

    async def delete(
        self, record_id: str, *, drop: Iterable[str] = (), expected: int | None = None
    ) -> int:
        return await self._submit(record_id, None, None, tuple(drop))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await self._flusher
        if self._conn is not None:
            await self._in_writer(self._conn.close)
            self._conn = None
        if self._lock is not None:
            self._lock.close()  # the flock goes with it
            self._lock = None
        self._executor.shutdown()

    # --- on the event loop ---------------------------------------------------------------

    async def _in_writer(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def _submit(
        self,
        record_id: str,
        body: bytes | None,
        document: Document | None,
        drop: tuple[str, ...],
    ) -> int:
        if self._closed or self._conn is None:
            raise StoreError(f"{self.url} is {'closed' if self._closed else 'not open'}")
        self._revision += 1  # handed out in queue order, which is commit order
        done = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(record_id, body, document, drop, self._revision, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await done

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
            for write in batch:  # the feed first, in commit order; then the writers
                self._emit(write.change())
            for write in batch:
                if not write.done.done():
                    write.done.set_result(write.revision)
        self._flusher = None

    # --- in the writer thread ------------------------------------------------------------

    def _open_sync(self) -> Snapshot:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        if self._lock is None:  # opened again (a reread): the lock is ours already
            self._lock_sync()
        if self._conn is not None:
            self._conn.close()
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            snapshot = self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return snapshot

    def _lock_sync(self) -> None:
        """One master per file: two would each keep their own view and diverge. An
        exclusive flock on `<file>.lock`, held while open, says so at once; the lock file
        names the holder. (flock is released by the kernel when the holder dies.)"""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 - held until close()
        except OSError as exc:
            raise StoreError(f"cannot open {lock_path}: {exc}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreLocked(
                f"{self.path} is in use by another master ({holder}); one master per "
                "SQLite file: stop that one, give this one another file, or use etcd:// "
                "for several masters"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._lock = handle

    def _prepare(self, conn: sqlite3.Connection) -> Snapshot:
        """Set the pragmas, create, upgrade or check the schema, and read everything."""
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
                if version == 1:
                    _upgrade_from_v1(conn)
                elif version == 2:
                    conn.execute(
                        "ALTER TABLE services ADD COLUMN created INTEGER NOT NULL DEFAULT 0"
                    )
                    conn.execute("UPDATE services SET created = revision")
                for statement in SCHEMA_V2:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            row = conn.execute("SELECT value FROM state WHERE key = 'revision'").fetchone()
            rows = conn.execute("SELECT id, body, created, revision FROM services").fetchall()
            documents = dict(conn.execute("SELECT sha256, body FROM documents").fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        return Snapshot(
            revision=row[0] if row else 0,
            records={
                key: StoredRecord(_bytes(body), created or modified, modified)
                for key, body, created, modified in rows
            },
            documents={k: _bytes(v) for k, v in documents.items()},
        )

    def _commit_sync(self, batch: list[_Write]) -> None:
        assert self._conn is not None
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            # In queue order, so the last write to an id wins. Runs of puts go in one
            # executemany; documents live in their own table, so their order against the
            # services' rows does not matter, only among themselves.
            upserts: list[tuple[str, bytes, int]] = []
            for write in batch:
                if write.document is not None:
                    conn.execute(_PUT_DOCUMENT, (write.document.sha256, write.document.body))
                if write.drop:
                    conn.executemany(_DROP_DOCUMENT, [(sha,) for sha in write.drop])
                if write.body is not None:
                    upserts.append((write.record_id, write.body, write.revision))
                    continue
                conn.executemany(_UPSERT, upserts)
                upserts.clear()
                conn.execute("DELETE FROM services WHERE id = ?", (write.record_id,))
            conn.executemany(_UPSERT, upserts)
            conn.execute(
                "INSERT OR REPLACE INTO state (key, value) VALUES ('revision', ?)",
                (batch[-1].revision,),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise StoreError(f"commit to {self.path} failed: {exc}") from exc


def _bytes(value: bytes | str) -> bytes:
    """A row's body: written as a BLOB; TEXT where a person or an older master wrote it."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)


def _upgrade_from_v1(conn: sqlite3.Connection) -> None:
    """Version 1 held each record as JSON text with its document inside: move every
    document to its own table, once per distinct content, and name it by sha256. A row
    that is not a JSON object is left for the registry to skip (and log)."""
    rows = conn.execute("SELECT id, body FROM services").fetchall()
    conn.execute("ALTER TABLE services RENAME TO services_v1")
    for statement in SCHEMA_V2:
        conn.execute(statement)
    for revision, (record_id, text) in enumerate(rows, 1):
        body: Any
        try:
            body = loads_json(text)
        except FieldError:
            body = None
        if isinstance(body, dict):
            document = body.pop("openapi", None)
            body["openapi_sha256"] = None
            if isinstance(document, dict):
                stored = Document.of(canonical_document(document))
                conn.execute(
                    "INSERT OR REPLACE INTO documents (sha256, body) VALUES (?, ?)",
                    (stored.sha256, stored.body),
                )
                body["openapi_sha256"] = stored.sha256
            text = encode(body)
        conn.execute(
            "INSERT INTO services (id, body, revision, created) VALUES (?, ?, ?, ?)",
            (record_id, text if isinstance(text, bytes) else text.encode(), revision, revision),
        )
    conn.execute("INSERT INTO state (key, value) VALUES ('revision', ?)", (len(rows),))
    conn.execute("DROP TABLE services_v1")
    log.info("sqlite_upgraded", from_version=1, to_version=SCHEMA_VERSION, records=len(rows))
