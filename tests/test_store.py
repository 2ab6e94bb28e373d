"""The stores: one conformance suite for every scheme, then what only SQLite promises."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from master.model import Document
from master.registry import Registry
from master.store import Store, StoreError, open_store_url
from master.store.base import Change, Conflict, Snapshot
from master.store.etcd import EtcdStore
from master.store.sqlite import SCHEMA_V2, SCHEMA_VERSION, SQLiteStore
from tests import etcd_fixture
from tests.etcd_fixture import EtcdCluster, start_etcd_cluster, store_url

etcd = etcd_fixture.etcd  # bound, not imported: no F811 on uses


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # tmp_path is absolute, so this is the four-slash form


def execute(path: Path, sql: str, *params: str) -> list[Any]:
    """Run one statement on another connection, as a second process would, and commit."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


def body(n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"id": f"svc-{n}", "name": "svc", "port": 8000 + n, "tags": ["a", "b"], **extra}


def put(store: Store, record_id: str, record: dict[str, Any]) -> Any:
    """A store keeps bytes; the stdlib's JSON, so any text (a lone surrogate too) survives."""
    return store.put(record_id, json.dumps(record).encode())


def records(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    return {record_id: json.loads(stored.body) for record_id, stored in snapshot.records.items()}


class Harness:
    """A store under test; `reload` returns what a restarted master would read back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store: Store = open_store_url(url)

    async def reload(self) -> dict[str, dict[str, Any]]:
        if self.url == "memory://":  # nothing outlives the process: read the same one again
            return records(await self.store.open())
        await self.store.close()
        self.store = open_store_url(self.url)
        return records(await self.store.open())


@pytest.fixture(params=["memory", "sqlite"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    url = "memory://" if request.param == "memory" else sqlite_url(tmp_path / "registry.db")
    harness = Harness(url)
    assert records(await harness.store.open()) == {}
    yield harness
    await harness.store.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore.from_url(sqlite_url(tmp_path / "registry.db"))
    await store.open()
    yield store
    await store.close()


# --- every store -------------------------------------------------------------------------


async def test_put_reads_back(harness: Harness) -> None:
    await put(harness.store, "svc-1", body(1))
    await put(harness.store, "svc-2", body(2))
    assert await harness.reload() == {"svc-1": body(1), "svc-2": body(2)}


async def test_put_overwrites(harness: Harness) -> None:
    await put(harness.store, "svc-1", body(1))
    await put(harness.store, "svc-1", body(1, status="critical"))
    assert await harness.reload() == {"svc-1": body(1, status="critical")}


async def test_delete_removes(harness: Harness) -> None:
    await put(harness.store, "svc-1", body(1))
    await put(harness.store, "svc-2", body(2))
    await harness.store.delete("svc-1")
    assert await harness.reload() == {"svc-2": body(2)}


async def test_delete_of_absent_id_is_a_no_op(harness: Harness) -> None:
    await put(harness.store, "svc-1", body(1))
    await harness.store.delete("nobody")
    assert await harness.reload() == {"svc-1": body(1)}


async def test_unicode_survives(harness: Harness) -> None:
    text = {"meta": {"team": "Datenfluß", "note": "日本語 ✓ 🚀", "odd": "\ud800 \x00"}}
    await put(harness.store, "dienst-ü-🚀", body(1, **text))
    assert await harness.reload() == {"dienst-ü-🚀": body(1, **text)}


async def test_stored_body_is_a_snapshot(harness: Harness) -> None:
    record = body(1)
    await put(harness.store, "svc-1", record)
    record["tags"].append("changed-later")
    assert await harness.reload() == {"svc-1": body(1)}


async def test_later_concurrent_write_to_an_id_wins(harness: Harness) -> None:
    store = harness.store
    await put(store, "svc-2", body(2))
    await asyncio.gather(
        put(store, "svc-1", body(1)),
        put(store, "svc-1", body(1, status="passing")),
        store.delete("svc-2"),
        put(store, "svc-2", body(2, status="warning")),
        put(store, "svc-3", body(3)),
        store.delete("svc-3"),
    )
    assert await harness.reload() == {
        "svc-1": body(1, status="passing"),
        "svc-2": body(2, status="warning"),
    }


async def test_describe_names_the_url(harness: Harness) -> None:
    assert harness.store.describe() == harness.url


# --- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///./picoapi-data/registry.db", Path("picoapi-data/registry.db")),
        ("sqlite:///registry.db", Path("registry.db")),
        ("sqlite:////abs/x.db", Path("/abs/x.db")),
    ],
)
def test_sqlite_url_names_a_path(url: str, path: Path) -> None:
    store = open_store_url(url)
    assert isinstance(store, SQLiteStore)
    assert store.path == path
    assert store.describe() == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite:///data/", "names no file"),
        ("sqlite://host/x.db", "bad SQLite store URL"),
        ("sqlite:///x.db?mode=ro", "bad SQLite store URL"),
        ("redis://localhost:6379", "unknown store scheme"),
        ("registry.db", "unknown store scheme"),
        ("", "unknown store scheme"),
    ],
)
def test_bad_url_is_a_value_error(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_store_url(url)


# --- SQLite only -------------------------------------------------------------------------


async def test_sqlite_file_is_created_with_its_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "registry.db"
    store = SQLiteStore.from_url(sqlite_url(path))
    await store.open()
    await put(store, "svc-1", body(1))
    await store.close()
    assert execute(path, "PRAGMA journal_mode") == [("wal",)]
    await store.close()
    assert execute(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert execute(path, "SELECT id FROM services") == [("svc-1",)]
    reopened = SQLiteStore.from_url(sqlite_url(path))
    assert records(await reopened.open()) == {"svc-1": body(1)}
    await reopened.close()


async def test_concurrent_writes_share_commits(sqlite_store: SQLiteStore) -> None:
    await asyncio.gather(*(put(sqlite_store, f"svc-{n}", body(n)) for n in range(500)))
    assert sqlite_store.writes == 500
    assert sqlite_store.commits < 100

    async def writer(w: int) -> None:
        for n in range(20):
            await put(sqlite_store, f"w{w}-{n}", body(n))

    await asyncio.gather(*(writer(w) for w in range(64)))
    assert sqlite_store.writes == 500 + 64 * 20
    assert sqlite_store.commits < 64 * 20 // 8


async def test_failed_commit_fails_every_waiter_then_recovers(
    sqlite_store: SQLiteStore,
) -> None:
    await put(sqlite_store, "svc-0", body(0))
    execute(sqlite_store.path, "DROP TABLE services")
    results = await asyncio.gather(
        *(put(sqlite_store, f"svc-{n}", body(n)) for n in range(1, 11)), return_exceptions=True
    )
    assert all(isinstance(result, StoreError) for result in results), results
    assert "no such table" in str(results[0])
    execute(sqlite_store.path, SCHEMA_V2[0])
    await put(sqlite_store, "svc-11", body(11))
    await sqlite_store.delete("svc-11")
    await put(sqlite_store, "svc-12", body(12))
    await sqlite_store.close()
    reopened = SQLiteStore.from_url(sqlite_store.url)
    assert records(await reopened.open()) == {"svc-12": body(12)}
    await reopened.close()


async def test_close_finishes_pending_writes_and_is_idempotent(tmp_path: Path) -> None:
    store = SQLiteStore.from_url(sqlite_url(tmp_path / "registry.db"))
    await store.open()
    puts = [asyncio.create_task(put(store, f"svc-{n}", body(n))) for n in range(100)]
    await asyncio.sleep(0)  # let every put queue its write
    await store.close()
    await store.close()
    await asyncio.gather(*puts)
    with pytest.raises(StoreError, match="closed"):
        await put(store, "late", body())
    reopened = SQLiteStore.from_url(store.url)
    assert len((await reopened.open()).records) == 100
    await reopened.close()


async def test_write_before_open_is_a_store_error(tmp_path: Path) -> None:
    store = SQLiteStore.from_url(sqlite_url(tmp_path / "registry.db"))
    with pytest.raises(StoreError, match="not open"):
        await put(store, "svc-1", body(1))
    await store.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    execute(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SQLiteStore.from_url(sqlite_url(path))
    with pytest.raises(StoreError, match="newer master"):
        await store.open()
    await store.close()


async def test_corrupt_rows_are_skipped_with_a_warning(sqlite_store: SQLiteStore) -> None:
    await put(sqlite_store, "good", {**body(1), "id": "good", "address": "127.0.0.1"})
    await sqlite_store.close()
    insert = "INSERT INTO services (id, body) VALUES (?, ?)"
    execute(sqlite_store.path, insert, "torn", '{"id": "torn", "na')
    execute(sqlite_store.path, insert, "list", "[1, 2]")
    reopened = SQLiteStore.from_url(sqlite_store.url)
    registry = Registry(reopened)  # what a master loads
    with capture_logs() as logs:
        await registry.load()
    await reopened.close()
    assert [record.id for record in registry.records()] == ["good"]
    skipped = {e["service_id"] for e in logs if e["event"] == "store_row_skipped"}
    assert skipped == {"torn", "list"}


async def test_unreadable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "registry.db").mkdir()
    store = SQLiteStore.from_url(sqlite_url(tmp_path / "registry.db"))
    with pytest.raises(StoreError, match="cannot open"):
        await store.open()
    await store.close()


# --- durability across SIGKILL -----------------------------------------------------------

WRITER = """
import asyncio, sys
from master.store import open_store_url

async def writer(store, w):
    for n in range(100_000):
        record_id = f"w{w}-{n}"
        await store.put(record_id, b'{"id": "%s", "n": %d}' % (record_id.encode(), n))
        sys.stdout.write(record_id + "\\n")
        sys.stdout.flush()

async def main():
    store = open_store_url(sys.argv[1])
    await store.open()
    await asyncio.gather(*(writer(store, w) for w in range(16)))

asyncio.run(main())
"""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Child processes a test starts; any still running at the end are killed."""
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        if child.stdout:
            child.stdout.close()


def read_lines(child: subprocess.Popen[bytes], count: int, timeout: float) -> bytes:
    """Read the child's stdout until it holds `count` lines, within `timeout` seconds."""
    assert child.stdout is not None
    fd, data = child.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while (lines := data.count(b"\n")) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {lines} acks within {timeout}s"
        if select.select([fd], [], [], remaining)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"writer exited ({child.wait()}) after {lines} acks"
            data += chunk
    return data


def test_every_acknowledged_write_survives_sigkill(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    url = sqlite_url(tmp_path / "registry.db")
    with (tmp_path / "writer.log").open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, stderr=log
        )
    spawn.append(child)
    data = read_lines(child, 2000, timeout=60)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(10) == -signal.SIGKILL
    assert child.stdout is not None
    data += child.stdout.read()  # acks already in the pipe when it died count too
    acked = [line.decode() for line in data.split(b"\n")[:-1]]  # a torn last line is no ack
    stored = asyncio.run(read_back(url))
    missing = [record_id for record_id in acked if record_id not in stored]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes lost: {missing[:5]}"


async def read_back(url: str) -> dict[str, dict[str, Any]]:
    """What a master restarted on the same file would load."""
    store = open_store_url(url)
    try:
        return records(await store.open())
    finally:
        await store.close()


# --- revisions and documents ---------------------------------------------------------------


async def test_revision_moves_on_every_write_and_survives_a_restart(harness: Harness) -> None:
    first = await put(harness.store, "svc-1", body(1))
    second = await put(harness.store, "svc-2", body(2))
    third = await harness.store.delete("svc-1")
    assert first < second < third
    if harness.url != "memory://":
        await harness.store.close()
        harness.store = open_store_url(harness.url)
    assert (await harness.store.open()).revision == third
    assert await put(harness.store, "svc-3", body(3)) > third


async def test_documents_are_kept_once_and_dropped_when_asked(harness: Harness) -> None:
    document = Document.of(b'{"openapi":"3.0.3"}')
    await harness.store.put("svc-1", b"{}", document)
    await harness.store.put("svc-2", b"{}", document)
    if harness.url != "memory://":
        await harness.store.close()
        harness.store = open_store_url(harness.url)
    assert (await harness.store.open()).documents == {document.sha256: document.body}
    await harness.store.delete("svc-1")
    await harness.store.delete("svc-2", drop=[document.sha256])
    assert (await harness.store.open()).documents == {}


async def test_version_1_file_is_upgraded_with_its_documents_moved(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    document = {"openapi": "3.0.3", "paths": {"/a": {}}, "info": {"title": "x"}}
    execute(path, "CREATE TABLE services (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    for record_id in ("svc-1", "svc-2"):
        row = {"id": record_id, "name": "svc", "address": "10.0.0.1", "port": 80}
        execute(
            path,
            "INSERT INTO services VALUES (?, ?)",
            record_id,
            json.dumps({**row, "status": "passing", "openapi": document}),
        )
    execute(path, "PRAGMA user_version = 1")
    store = SQLiteStore.from_url(sqlite_url(path))
    registry = Registry(store)
    assert await registry.load() == 2
    assert registry.index == 2
    stored = execute(path, "SELECT sha256 FROM documents")
    assert len(stored) == 1  # two records, one document
    for record in registry.records():
        assert record.openapi_sha256 == stored[0][0]
        assert json.loads(b"".join(registry.with_document(record)))["openapi"] == document
    await store.close()
    assert execute(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_the_feed_carries_every_commit_in_revision_order(harness: Harness) -> None:
    seen: list[Change] = []
    harness.store.subscribe(seen.append)
    document = Document.of(b'{"openapi":"3.1.0"}')
    first = await harness.store.put("svc-1", b'{"n":1}', document)
    second = await harness.store.put("svc-1", b'{"n":2}', drop=[document.sha256])
    third = await harness.store.delete("svc-1")
    assert [change.revision for change in seen] == [first, second, third]
    assert seen[0].records["svc-1"].body == b'{"n":1}'  # type: ignore[union-attr]
    assert seen[0].documents == {document.sha256: document.body}
    assert seen[1].records["svc-1"].modified == second  # type: ignore[union-attr]
    assert seen[1].documents == {document.sha256: None}
    assert seen[2].records == {"svc-1": None}


async def test_created_and_modified_revisions_are_kept(harness: Harness) -> None:
    created = await put(harness.store, "svc-1", body(1))
    modified = await put(harness.store, "svc-1", body(1, status="critical"))
    if harness.url != "memory://":
        await harness.store.close()
        harness.store = open_store_url(harness.url)
    stored = (await harness.store.open()).records["svc-1"]
    assert (stored.created, stored.modified) == (created, modified)


async def test_a_write_expecting_another_revision_is_refused() -> None:
    store = open_store_url("memory://")
    await store.open()
    revision = await store.put("svc-1", b"{}", expected=0)
    with pytest.raises(Conflict):
        await store.put("svc-1", b"{}", expected=0)  # not absent any more
    with pytest.raises(Conflict):
        await store.delete("svc-1", expected=revision + 5)
    assert await store.put("svc-1", b"{}", expected=revision) > revision


# --- etcd: the feed ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def etcd_store(url: str) -> AsyncIterator[tuple[EtcdStore, list[Change]]]:
    """An EtcdStore opened and followed; the changes its feed delivered."""
    store = EtcdStore(url)
    seen: list[Change] = []
    try:
        await store.open()
        store.subscribe(seen.append)
        yield store, seen
    finally:
        await store.close()


async def eventually(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_quiet_etcd_registry_is_not_reported_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd's default progress interval is 10 min, far above the store's idle bound: a
    registry nobody writes to is quiet, not cut off, and must not say it is stale (nor
    stay stale once etcd is back)."""
    monkeypatch.setattr("master.store.etcd.WATCH_IDLE", 0.5)
    with start_etcd_cluster(tmp_path / "etcd", progress_interval=600.0) as cluster:
        async with etcd_store(store_url(cluster)) as (store, seen):
            revision = await store.put("svc-1", b'{"n":1}', expected=0)
            await eventually(lambda: seen and seen[-1].revision == revision, 5, "feed")
            for _ in range(30):  # 3 s: several idle bounds
                assert store.stale_for() is None, store.last_error
                await asyncio.sleep(0.1)
            # and the feed still follows
            second = await store.put("svc-1", b'{"n":2}', expected=revision)
            await eventually(lambda: seen[-1].revision == second, 5, "feed after quiet")
            # a real outage is reported, and its end too, with nothing written since
            cluster.stop(0)
            await eventually(lambda: store.stale_for() is not None, 10, "outage seen")
            cluster.start_all()
            await eventually(lambda: store.stale_for() is None, 10, "still stale after")


async def test_a_conflict_names_a_revision_the_feed_reaches(etcd: EtcdCluster) -> None:
    """The registry waits for a Conflict's revision to come through the feed before it
    tries again: it must be one the feed delivers, even when etcd's revision moved on for
    keys that are not the registry's (another prefix, a member joining)."""
    async with etcd_store(store_url(etcd)) as (store, seen):
        revision = await store.put("svc-1", b'{"n":1}', expected=0)
        etcd.put(b"/elsewhere/key", b"not the registry's")
        with pytest.raises(Conflict) as refused:
            await store.put("svc-1", b'{"n":2}', expected=0)
        assert refused.value.revision >= revision
        await eventually(
            lambda: seen and seen[-1].revision >= refused.value.revision,
            3,
            f"the feed never reached the conflict's revision {refused.value.revision}",
        )


async def test_the_sweep_keeps_a_document_named_while_it_looked(etcd: EtcdCluster) -> None:
    """The sweep finds a document unused in the registry's view, then lists etcd's: a
    record that names the document in between must keep it (the txn compares against the
    view the counts came from, not a later one)."""
    document = Document.of(b'{"openapi":"3.1.0"}')
    async with etcd_store(store_url(etcd)) as (store, seen):
        first = await store.put("svc-1", b'{"n":1}', document, expected=0)
        second = await store.put("svc-1", b'{"n":2}', expected=first)  # stops naming it
        await eventually(lambda: seen and seen[-1].revision == second, 5, "feed")
        store.follow_documents(lambda: {})  # the registry's view: nobody names it
        named: list[int] = []
        listing = store.client.range

        async def range_while_a_record_names_it(*args: Any, **kwargs: Any) -> Any:
            if not named:  # another master's record names the document meanwhile
                named.append(
                    await store.put("svc-2", b'{"n":3}', expected=0, names=document.sha256)
                )
                await eventually(lambda: seen[-1].revision == named[0], 5, "feed")
            return await listing(*args, **kwargs)

        store.client.range = range_while_a_record_names_it  # type: ignore[method-assign]
        assert await store.sweep_once(grace=0) == 0
        store.client.range = listing  # type: ignore[method-assign]
        _, kvs = await store.client.range(store.prefix + b"documents/" + document.sha256.encode())
        assert [kv.value for kv in kvs] == [document.body]


async def test_a_sweep_that_removes_a_document_moves_the_index(etcd: EtcdCluster) -> None:
    document = Document.of(b'{"openapi":"3.1.0"}')
    async with etcd_store(store_url(etcd)) as (store, seen):
        first = await store.put("svc-1", b'{"n":1}', document, expected=0)
        second = await store.put("svc-1", b'{"n":2}', expected=first)
        await eventually(lambda: seen and seen[-1].revision == second, 5, "feed")
        store.follow_documents(lambda: {})
        assert await store.sweep_once(grace=0) == 1
        await eventually(lambda: seen[-1].documents == {document.sha256: None}, 5, "feed")
        etcd.put(b"/elsewhere/key", b"not the registry's")
        # a write naming it now is refused at the revision the feed said it went
        with pytest.raises(Conflict) as refused:
            await store.put("svc-2", b"{}", expected=0, names=document.sha256)
        assert refused.value.revision == seen[-1].revision
        # and a master started now reports the same index, not an older one
        fresh = EtcdStore(store_url(etcd))
        try:
            assert (await fresh.open()).revision == seen[-1].revision
        finally:
            await fresh.close()


async def test_a_failing_reload_after_a_compaction_backs_off(etcd: EtcdCluster) -> None:
    """The watch's revision was compacted and the listing that should follow fails: the
    store tries again with backoff, not in a loop of watches and listings."""
    from master.store.etcd_gateway import EtcdError

    store = EtcdStore(store_url(etcd))
    try:
        await store.open()
        for n in range(3):
            latest = etcd.put(b"/elsewhere/key", b"%d" % n)
        etcd.compact(latest)
        listings = 0

        async def failing_list() -> Snapshot:
            nonlocal listings
            listings += 1
            raise EtcdError("etcdserver: request is too large")

        store._list = failing_list  # type: ignore[method-assign]
        store.subscribe(lambda change: None)
        await asyncio.sleep(2.0)
        assert 1 <= listings <= 8, f"{listings} listings in 2 s"
        assert store.stale_for() is not None
    finally:
        await store.close()


async def test_a_feed_that_raises_does_not_stop_the_later_changes(harness: Harness) -> None:
    """The feed is the registry's; should it raise on one change, the store goes on
    committing and delivering (a dead SQLite flusher would leave every later write
    waiting forever)."""
    seen: list[int] = []

    def feed(change: Change) -> None:
        seen.append(change.revision)
        if len(seen) == 1:
            raise RuntimeError("a bug in the registry")

    harness.store.subscribe(feed)
    with capture_logs() as logs:
        async with asyncio.timeout(5):
            first = await put(harness.store, "svc-1", body(1))
            second = await put(harness.store, "svc-2", body(2))
    assert seen == [first, second]
    assert [entry["event"] for entry in logs] == ["store_feed_failed"]


async def test_a_feed_that_raises_does_not_end_the_etcd_watch(etcd: EtcdCluster) -> None:
    async with etcd_store(store_url(etcd)) as (store, seen):
        failed: list[int] = []

        def feed(change: Change) -> None:
            if not failed:
                failed.append(change.revision)
                raise RuntimeError("a bug in the registry")
            seen.append(change)

        store.subscribe(feed)
        await store.put("svc-1", b"{}", expected=0)
        await eventually(lambda: failed, 5, "first change")
        second = await store.put("svc-2", b"{}", expected=0)
        await eventually(lambda: seen and seen[-1].revision == second, 5, "the watch ended")


async def test_a_document_swept_elsewhere_is_not_swept_again(etcd: EtcdCluster) -> None:
    """Two masters sweep the same document: one removes it, the other's sweep commits
    nothing (no index moved for a no-op)."""
    document = Document.of(b'{"openapi":"3.1.0"}')
    async with etcd_store(store_url(etcd)) as (store, seen):
        first = await store.put("svc-1", b'{"n":1}', document, expected=0)
        second = await store.put("svc-1", b'{"n":2}', expected=first)
        await eventually(lambda: seen and seen[-1].revision == second, 5, "feed")
        store.follow_documents(lambda: {})
        listing = store.client.range

        async def listed_before_the_other_master_swept(*args: Any, **kwargs: Any) -> Any:
            answer = await listing(*args, **kwargs)
            await store.client.delete(store.prefix + b"documents/" + document.sha256.encode())
            return answer

        store.client.range = listed_before_the_other_master_swept  # type: ignore[method-assign]
        assert await store.sweep_once(grace=0) == 0
        store.client.range = listing  # type: ignore[method-assign]
        _, kvs = await store.client.range(store.prefix + b"index")
        assert kvs[0].mod_revision == second
