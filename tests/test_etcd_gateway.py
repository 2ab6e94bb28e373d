"""master.store.etcd_gateway against a real etcd on loopback (tests/etcd_fixture.py): the
encoding, paging, txn branches, leases, watch (order, resume, compaction, progress,
quorum loss) and endpoint failover. Each test is bounded by `bounded(seconds)`."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Final, TypeVar

import pytest
from aiohttp import web

from master.store import etcd_gateway
from master.store.etcd_gateway import (
    Compacted,
    Compare,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Event,
    LineBuffer,
    Op,
    WatchBatch,
    WatchIdle,
    prefix_end,
)
from tests import etcd_fixture
from tests.etcd_fixture import LEASE_MIN_TTL, PROGRESS_INTERVAL, EtcdCluster, free_ports

etcd = etcd_fixture.etcd  # bound, not imported: no F811 on uses
etcd_cluster = etcd_fixture.etcd_cluster

F = TypeVar("F", bound=Callable[..., Awaitable[None]])
MIB: Final = 1 << 20


def bounded(seconds: float) -> Callable[[F], F]:
    """Fail the test (instead of hanging CI) if its body takes longer than `seconds`."""

    def wrap(test: F) -> F:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


@pytest.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(etcd.urls, timeout=5.0) as c:
        yield c


async def put_many(client: EtcdClient, keys: list[bytes], value: bytes = b"v") -> None:
    """Many single-key puts, 32 at a time (etcd batches their commits)."""
    gate = asyncio.Semaphore(32)

    async def one(key: bytes) -> None:
        async with gate:
            await client.put(key, value)

    await asyncio.gather(*(one(k) for k in keys))


async def collect(
    stream: AsyncIterator[WatchBatch], events: int, *, progress: int = 0
) -> list[WatchBatch]:
    """Batches from `stream` until `events` events and `progress` notifications came."""
    batches: list[WatchBatch] = []
    async for batch in stream:
        batches.append(batch)
        seen_events = sum(len(b.events) for b in batches)
        if seen_events >= events and sum(b.progress for b in batches) >= progress:
            return batches
    raise AssertionError("the watch ended")


def flat(batches: list[WatchBatch]) -> list[Event]:
    return [event for batch in batches for event in batch.events]


# -- without etcd: the pieces that have no server in them ---------------------------------


def test_line_buffer_finds_every_message_whatever_the_chunks() -> None:
    messages = [b'{"result":{"n":%d}}' % i for i in range(50)] + [b"x" * 100_000]
    stream = b"\n\n".join(messages) + b"\r\n\n"  # blank lines between, CRLF at the end
    for seed in range(20):
        rng, buffer, got, at = random.Random(seed), LineBuffer(), [], 0
        while at < len(stream):
            step = rng.choice([1, 2, 7, 64, 4096, 70_000])
            got += buffer.feed(stream[at : at + step])
            at += step
        assert got == messages
    assert LineBuffer().feed(b'{"a":1}') == []  # no newline yet: not a message


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"p/", b"p0"),
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"\x00", b"\x01"),
        (b"\xff", b"\x00"),
        (b"", b"\x00"),
    ],
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


@pytest.mark.parametrize(
    ("body", "status", "kind", "refused"),
    [
        # 3.4/3.5 unary (grpc-gateway v1)
        (
            {"error": "etcdserver: no leader", "message": "etcdserver: no leader", "code": 14},
            503,
            EtcdUnavailable,
            True,
        ),
        ({"error": "etcdserver: request timed out", "code": 14}, 503, EtcdUnavailable, False),
        (
            {"error": "etcdserver: mvcc: required revision has been compacted", "code": 11},
            400,
            Compacted,
            False,
        ),
        ({"error": "etcdserver: requested lease not found", "code": 5}, 404, EtcdError, False),
        # 3.6 unary: google.rpc.Status, no "error" field
        (
            {"code": 14, "message": "etcdserver: no leader", "details": []},
            503,
            EtcdUnavailable,
            True,
        ),
        (
            {"code": 3, "message": "etcdserver: duplicate key given in txn request", "details": []},
            400,
            EtcdError,
            False,
        ),
        # a streamed error: 3.4/3.5 (grpc_code) and 3.6 (code)
        (
            {
                "error": {
                    "grpc_code": 14,
                    "http_code": 503,
                    "message": "etcdserver: no leader",
                    "http_status": "Service Unavailable",
                }
            },
            200,
            EtcdUnavailable,
            True,
        ),
        (
            {"error": {"code": 14, "message": "etcdserver: no leader", "details": []}},
            200,
            EtcdUnavailable,
            True,
        ),
        # not JSON at all (a proxy, a wrong path)
        ("404 page not found", 404, EtcdError, False),
        ("Bad Gateway", 502, EtcdUnavailable, False),
    ],
)
def test_error_bodies_of_every_version(body: Any, status: int, kind: type, refused: bool) -> None:
    error = etcd_gateway._error(body, status)
    assert type(error) is kind, error
    assert getattr(error, "refused", False) is refused
    assert str(error)


@bounded(10)
async def test_all_endpoints_dead_is_unavailable_quickly() -> None:
    dead = [f"http://127.0.0.1:{port}" for port in free_ports(2)]
    async with EtcdClient(dead, timeout=2.0) as c:
        started = time.monotonic()
        for call in (c.range(b"k"), c.put(b"k", b"v"), c.lease_grant(5), c.status()):
            with pytest.raises(EtcdUnavailable) as caught:
                await call
            assert all(url in str(caught.value) for url in dead), caught.value
            assert caught.value.refused and not caught.value.outcome_unknown  # never sent
        with pytest.raises(EtcdUnavailable):
            async with aclosing(c.watch(b"k", None, 0)) as stream:
                await anext(stream)
        assert time.monotonic() - started < 2.0  # refused at once, no timeout waited for


@bounded(20)
async def test_a_write_whose_answer_is_lost_is_not_sent_again(etcd: EtcdCluster) -> None:
    """A member that takes the request and never answers: a read moves on to the next
    endpoint; a write stops there (it may have been applied) and says so."""
    hung: list[str] = []
    done = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        hung.append(request.path)
        await done.wait()  # the client gave up long before
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/{tail:.*}", never)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with EtcdClient([f"http://127.0.0.1:{port}", etcd.urls[0]], timeout=0.5) as c:
            with pytest.raises(EtcdUnavailable) as caught:
                await c.put(b"lost", b"1")
            assert caught.value.outcome_unknown and not caught.value.refused
            assert hung == ["/v3/kv/put"]  # not repeated on the etcd behind it
            assert (await c.range(b"lost"))[1] == []  # the hung one first, then etcd
            assert hung == ["/v3/kv/put", "/v3/kv/range"]
            assert c.endpoints[c._current] == etcd.urls[0]
    finally:
        done.set()
        await runner.cleanup()


# -- KV ------------------------------------------------------------------------------------


@bounded(20)
async def test_bytes_and_int64_round_trip(client: EtcdClient) -> None:
    keys = [b"\x00", b"k\x00zero", b"k\xff\xfe", b"\xff" * 3, "ключ".encode()]
    revisions = [await client.put(k, k[::-1]) for k in keys]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(keys)
    for key, revision in zip(keys, revisions, strict=True):
        at, [kv] = await client.range(key)
        assert at >= revision
        assert (kv.key, kv.value) == (key, key[::-1])
        assert (kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
            revision,
            revision,
            1,
            0,
        )

    # An empty value: etcd leaves the field out of its JSON.
    first = await client.put(b"empty", b"")
    second = await client.put(b"empty", b"")
    _, [kv] = await client.range(b"empty")
    assert (kv.value, kv.version, kv.create_revision, kv.mod_revision) == (b"", 2, first, second)

    big = random.Random(1).randbytes(MIB)
    await client.put(b"big", big)
    _, [kv] = await client.range(b"big")
    assert kv.value == big

    deleted_at = await client.delete(b"big")
    assert deleted_at > second
    assert await client.range(b"big") == (deleted_at, [])
    assert await client.delete(b"big") == deleted_at  # absent: no new revision
    assert await client.range(b"never-written") == (deleted_at, [])

    # Whole ranges: [key, range_end) and "from key on" (range_end b"\x00").
    _, kvs = await client.range(b"k", b"l")
    assert [kv.key for kv in kvs] == [b"k\x00zero", b"k\xff\xfe"]
    _, kvs = await client.range(b"\xff", b"\x00")
    assert [kv.key for kv in kvs] == [b"\xff" * 3]


@bounded(60)
async def test_prefix_range_pages_at_one_revision(
    client: EtcdClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [b"svc/%05d" % i for i in range(2500)]
    await put_many(client, keys)
    await client.put(b"svc0", b"just past the prefix")
    await client.put(b"svc.", b"just before it")

    pages: list[dict[str, Any]] = []
    post = client._post

    async def counting_post(path: str, body: dict[str, Any], **kw: Any) -> bytes:
        answer = await post(path, body, **kw)
        if path == "/v3/kv/range":
            pages.append(body)
            if len(pages) == 1:  # between two pages: a new key, a changed one, a deleted one
                await client.put(b"svc/00000-new", b"x")
                await client.put(b"svc/02499", b"changed")
                await client.delete(b"svc/01500")
        return answer

    monkeypatch.setattr(client, "_post", counting_post)
    revision, kvs = await client.range(b"svc/", prefix_end(b"svc/"))
    assert [kv.key for kv in kvs] == keys  # once each, in order, as of the first page
    assert {kv.value for kv in kvs} == {b"v"}
    assert [int(p["limit"]) for p in pages] == [1000, 1000, 1000]
    assert [p.get("revision") for p in pages] == [None, str(revision), str(revision)]
    assert max(kv.mod_revision for kv in kvs) <= revision

    monkeypatch.undo()
    now, kvs = await client.range(b"svc/", prefix_end(b"svc/"))
    assert now == revision + 3 and len(kvs) == 2500  # one new, one deleted
    _, kvs = await client.range(b"svc/", prefix_end(b"svc/"), limit=1500)
    assert len(kvs) == 1500
    _, kvs = await client.range(b"svc/", prefix_end(b"svc/"), revision=revision, limit=10)
    assert [kv.key for kv in kvs] == keys[:10]
    _, kvs = await client.range(b"svc/", prefix_end(b"svc/"), serializable=True)
    assert len(kvs) == 2500


@bounded(20)
async def test_txn_success_and_failure_branches(client: EtcdClient) -> None:
    absent = Compare(b"rec/a", "mod_revision", "=", 0)
    created = await client.txn([absent], [Op.put(b"rec/a", b"1")], [Op.range(b"rec/a")])
    assert created.succeeded and created.responses[0].kind == "put"

    again = await client.txn([absent], [Op.put(b"rec/a", b"2")], [Op.range(b"rec/a")])
    assert not again.succeeded and again.revision == created.revision  # nothing written
    [kv] = again.responses[0].kvs
    assert (kv.value, kv.mod_revision) == (b"1", created.revision)

    unchanged = Compare(b"rec/a", "mod_revision", "=", created.revision)
    updated = await client.txn([unchanged], [Op.put(b"rec/a", b"3")])
    assert updated.succeeded and updated.revision == created.revision + 1
    stale = await client.txn([unchanged], [Op.put(b"rec/a", b"4")])
    assert not stale.succeeded and stale.responses == ()

    # Each target and operator, against rec/a at version 2, value b"3".
    for compare, holds in [
        (Compare(b"rec/a", "version", "=", 2), True),
        (Compare(b"rec/a", "version", "!=", 2), False),
        (Compare(b"rec/a", "create_revision", "<", created.revision + 1), True),
        (Compare(b"rec/a", "mod_revision", ">", created.revision), True),
        (Compare(b"rec/a", "value", "=", b"3"), True),
        (Compare(b"rec/a", "value", "!=", b"3"), False),
        (Compare(b"rec/none", "version", "=", 0), True),  # an absent key is version 0
    ]:
        assert (await client.txn([compare], [])).succeeded is holds, compare
    with pytest.raises(TypeError):
        Compare(b"rec/a", "value", "=", 3).wire()

    # A compare over a range: "nothing under rec/ changed since `mark`".
    mark = updated.revision
    quiet = Compare(b"rec/", "mod_revision", "<", mark + 1, range_end=prefix_end(b"rec/"))
    assert (await client.txn([quiet], [])).succeeded
    await client.put(b"rec/b", b"new")
    assert not (await client.txn([quiet], [])).succeeded
    nobody = Compare(b"none/", "create_revision", "=", 0, range_end=prefix_end(b"none/"))
    assert (await client.txn([nobody], [])).succeeded  # an empty range: one absent key

    # Several ops in one branch, one revision; delete answers its count.
    both = await client.txn(
        [], [Op.delete(b"rec/", prefix_end(b"rec/")), Op.put(b"other", b"x"), Op.range(b"rec/a")]
    )
    assert [r.kind for r in both.responses] == ["delete", "put", "range"]
    assert both.responses[0].deleted == 2 and both.responses[2].kvs == ()
    with pytest.raises(EtcdError, match="duplicate key"):
        await client.txn([], [Op.put(b"dup", b"1"), Op.delete(b"dup")])


# -- leases --------------------------------------------------------------------------------


@bounded(20)
async def test_lease_grant_keepalive_revoke(client: EtcdClient) -> None:
    lease, ttl = await client.lease_grant(1)
    assert lease > 0 and ttl == LEASE_MIN_TTL  # raised to etcd's minimum
    lease, ttl = await client.lease_grant(30)
    assert ttl == 30
    await client.put(b"alive", b"1", lease=lease)
    _, [kv] = await client.range(b"alive")
    assert kv.lease == lease  # a 63-bit ID through a JSON string
    assert await client.lease_keepalive(lease) == 30

    await client.lease_revoke(lease)
    assert (await client.range(b"alive"))[1] == []
    assert await client.lease_keepalive(lease) == 0  # gone: TTL 0, not an error
    await client.lease_revoke(lease)  # already gone: fine
    assert await client.lease_keepalive(12345) == 0  # never existed


@bounded(20)
async def test_a_lease_not_kept_alive_expires(client: EtcdClient) -> None:
    lease, ttl = await client.lease_grant(LEASE_MIN_TTL)
    await client.put(b"mortal", b"1", lease=lease)
    await client.put(b"kept", b"1")
    started = time.monotonic()
    while (await client.range(b"mortal"))[1]:
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    assert ttl - 0.5 <= elapsed <= ttl + 2.0, elapsed  # the lessor checks every 500 ms
    assert await client.lease_keepalive(lease) == 0
    assert (await client.range(b"kept"))[1]


# -- watch ---------------------------------------------------------------------------------


@bounded(20)
async def test_watch_sees_puts_and_deletes_in_revision_order(client: EtcdClient) -> None:
    start = await client.put(b"before", b"not watched") + 1
    async with aclosing(client.watch(b"w/", prefix_end(b"w/"), start)) as stream:
        writes = asyncio.ensure_future(write_some(client))
        batches = await collect(stream, 5)
        assert (await writes) == start + 4
    events = flat(batches)
    assert [(e.kind, e.kv.key, e.kv.value) for e in events] == [
        ("put", b"w/a", b"1"),
        ("put", b"w/b", b"2"),
        ("delete", b"w/a", b""),
        ("put", b"w/c", b"3"),
        ("put", b"w/d", b"4"),
    ]
    revisions = [e.kv.mod_revision for e in events]
    # start + 2 went to a key outside the prefix; one txn is one revision
    assert revisions == [start, start + 1, start + 3, start + 4, start + 4]
    assert batches[-1].next_revision == start + 5
    assert not any(b.progress for b in batches if b.events)


async def write_some(client: EtcdClient) -> int:
    await client.put(b"w/a", b"1")
    await client.put(b"w/b", b"2")
    await client.put(b"not-w", b"ignored")  # outside the prefix: a revision, no event
    await client.delete(b"w/a")
    both = await client.txn([], [Op.put(b"w/c", b"3"), Op.put(b"w/d", b"4")])
    return both.revision


@bounded(30)
async def test_watch_resumes_without_losing_or_repeating(client: EtcdClient) -> None:
    first = await client.put(b"r/0", b"0")
    async with aclosing(client.watch(b"r/", prefix_end(b"r/"), first)) as stream:
        await client.put(b"r/1", b"1")
        seen = flat(await collect(stream, 2))
    resume = seen[-1].kv.mod_revision + 1
    for i in range(2, 6):  # while no watch runs
        await client.put(b"r/%d" % i, b"%d" % i)
    async with aclosing(client.watch(b"r/", prefix_end(b"r/"), resume)) as stream:
        seen += flat(await collect(stream, 4))
    assert [e.kv.key for e in seen] == [b"r/%d" % i for i in range(6)]
    assert [e.kv.mod_revision for e in seen] == list(range(first, first + 6))


@bounded(60)
async def test_watch_catch_up_over_1000_revisions_resumes_at_next_revision(
    client: EtcdClient,
) -> None:
    """A watch from far back gets its history in messages of at most 1000 revisions whose
    header is the store's newest revision: resuming from `next_revision` (after the last
    event) loses nothing; the header revision alone would skip what the next message holds."""
    first = await client.put(b"h/start", b"")
    await put_many(client, [b"h/%04d" % i for i in range(1500)])
    last = await client.put(b"h/end", b"")
    batches: list[WatchBatch] = []
    async with aclosing(client.watch(b"h/", prefix_end(b"h/"), first)) as stream:
        batches = await collect(stream, 1502)
    events = flat(batches)
    assert [e.kv.mod_revision for e in events] == list(range(first, last + 1))
    assert len(batches) >= 2
    early = batches[0]
    assert early.revision == last and early.next_revision <= last  # the header runs ahead
    async with aclosing(client.watch(b"h/", prefix_end(b"h/"), early.next_revision)) as stream:
        rest = flat(await collect(stream, 1502 - len(early.events)))
    assert [e.kv.mod_revision for e in rest] == list(range(early.next_revision, last + 1))


@bounded(20)
async def test_watch_and_range_before_a_compaction_raise_compacted(
    etcd: EtcdCluster, client: EtcdClient
) -> None:
    old = await client.put(b"c/a", b"1")
    for i in range(5):
        await client.put(b"c/a", b"%d" % i)
    now = await client.put(b"c/b", b"x")
    etcd.compact(now)
    with pytest.raises(Compacted) as caught:
        async with aclosing(client.watch(b"c/", prefix_end(b"c/"), old)) as stream:
            await anext(stream)
    assert caught.value.compact_revision == now
    with pytest.raises(Compacted):
        await client.range(b"c/a", revision=old)
    # From the compaction revision on, all is there.
    async with aclosing(client.watch(b"c/", prefix_end(b"c/"), now)) as stream:
        [event] = flat(await collect(stream, 1))
    assert event.kv.key == b"c/b"


@bounded(20)
async def test_watch_progress_notifications_on_an_idle_stream(client: EtcdClient) -> None:
    """The fixture sets etcd's progress interval to PROGRESS_INTERVAL (1 s, not 10 min)."""
    now = await client.put(b"idle-other", b"x")
    async with aclosing(
        client.watch(b"idle/", prefix_end(b"idle/"), now + 1, idle_timeout=3 * PROGRESS_INTERVAL)
    ) as stream:
        started = time.monotonic()
        batches = await collect(stream, 0, progress=2)
        assert time.monotonic() - started < 4 * PROGRESS_INTERVAL
        assert all(b.progress and not b.events and b.revision == now for b in batches)
        moved = await client.put(b"idle-other", b"y")  # outside the prefix: no event
        async for batch in stream:
            if batch.revision == moved:
                assert batch.progress and batch.next_revision == moved + 1
                break


@bounded(10)
async def test_watch_idle_timeout_raises_instead_of_hanging(client: EtcdClient) -> None:
    """With no progress notifications asked for, a quiet stream is as silent as a cut one:
    the idle timeout turns either into WatchIdle (an EtcdUnavailable)."""
    started = time.monotonic()
    with pytest.raises(WatchIdle):
        async with aclosing(
            client.watch(b"q/", prefix_end(b"q/"), 0, progress_notify=False, idle_timeout=0.5)
        ) as stream:
            await anext(stream)
    assert 0.5 <= time.monotonic() - started < 3.0


@bounded(20)
async def test_cancelling_a_watch_closes_its_stream(etcd: EtcdCluster, client: EtcdClient) -> None:
    metric = "etcd_debugging_mvcc_watch_stream_total"
    if etcd.metric(0, metric) is None:
        pytest.skip(f"this etcd has no {metric}")
    baseline = etcd.metric(0, metric)
    started = asyncio.Event()

    async def follow() -> None:
        async for _ in client.watch(b"x/", prefix_end(b"x/"), 0):
            started.set()

    task = asyncio.ensure_future(follow())
    await started.wait()  # a first progress notification: the stream is up
    assert etcd.metric(0, metric) == baseline + 1  # type: ignore[operator]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    while etcd.metric(0, metric) != baseline:
        await asyncio.sleep(0.05)


@bounded(40)
async def test_watch_on_a_member_that_lost_quorum_ends_unavailable(
    etcd_cluster: EtcdCluster,
) -> None:
    """Kill two of three: the survivor's watch is cancelled ("no leader", thanks to the
    hasleader header) within a few election timeouts, instead of going stale."""
    async with EtcdClient([etcd_cluster.urls[0]], timeout=2.0) as c:
        await c.put(b"q/a", b"1")
        stream = c.watch(b"q/", prefix_end(b"q/"), 0)
        async with aclosing(stream):
            await anext(stream)  # a progress notification: the watch is running
            etcd_cluster.kill(1)
            etcd_cluster.kill(2)
            lost = time.monotonic()
            with pytest.raises(EtcdUnavailable, match="no leader"):
                async for _ in stream:
                    pass
            took = time.monotonic() - lost
        assert took < 15, took
        # And a write there is refused at once, not held for etcd's 7 s request timeout.
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable) as caught:
            await c.put(b"q/b", b"2")
        assert caught.value.refused and time.monotonic() - started < 1.0
        status = await c.status()
        assert status.leader == 0 and any("no leader" in e for e in status.errors)
        _, kvs = await c.range(b"q/a", serializable=True)  # a stale read still works
        assert [kv.value for kv in kvs] == [b"1"]


# -- endpoints -----------------------------------------------------------------------------


@bounded(40)
async def test_a_restarted_member_is_used_again_at_once(etcd: EtcdCluster) -> None:
    """The member goes down and up between two requests, before the event loop has seen
    its kept-alive connections close: neither a read nor a write nor a watch fails."""
    async with EtcdClient(etcd.urls, timeout=3.0) as c:
        first = await c.put(b"s", b"1")
        for call in ("range", "keepalive", "put", "watch"):
            await c.range(b"s")  # a kept-alive connection in the pool
            etcd.stop_all()
            etcd.start_all()
            if call == "range":
                assert (await c.range(b"s"))[1][0].value == b"1"
            elif call == "keepalive":
                assert await c.lease_keepalive(1) == 0
            elif call == "put":
                assert await c.put(b"s", b"1") > first
            else:
                async with aclosing(c.watch(b"s", None, first)) as stream:
                    assert flat(await collect(stream, 1))[0].kv.mod_revision == first


@bounded(20)
async def test_a_dead_endpoint_is_skipped(etcd: EtcdCluster) -> None:
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    async with EtcdClient([dead, etcd.urls[0]], timeout=2.0) as c:
        revision = await c.put(b"k", b"v")
        assert c.endpoints[c._current] == etcd.urls[0]  # the one that answered stays first
        assert (await c.range(b"k"))[0] == revision
        assert (await c.status()).endpoint == etcd.urls[0]
        c._current = 0  # a watch starts on the dead one too, and moves on
        async with aclosing(c.watch(b"k", None, revision)) as stream:
            [event] = flat(await collect(stream, 1))
        assert event.kv.value == b"v"


@bounded(60)
async def test_cluster_member_restart_keeps_the_client_working(
    etcd_cluster: EtcdCluster,
) -> None:
    async with EtcdClient(etcd_cluster.urls, timeout=3.0) as c:
        first = await c.put(b"m", b"1")
        assert c._current == 0
        etcd_cluster.stop(0)
        second = await c.put(b"m", b"2")  # member 0 refuses connections: sent to 1
        assert second > first and c._current == 1
        etcd_cluster.start(0)
        etcd_cluster.kill(1)
        _, [kv] = await c.range(b"m")  # on to member 2 (0 and 2 are a quorum)
        assert kv.value == b"2"
        statuses = [await c.status(url) for url in (etcd_cluster.urls[0], etcd_cluster.urls[2])]
        assert len({s.leader for s in statuses}) == 1 and statuses[0].leader != 0
        assert {s.revision for s in statuses} == {second}


@bounded(10)
async def test_a_watch_never_acknowledged_is_unavailable_not_idle() -> None:
    """Silence before etcd acknowledged the watch is not a quiet stream (WatchIdle, which
    a follower may take calmly): the watch was never running."""

    done = asyncio.Event()

    async def mute(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await done.wait()
        return response

    app = web.Application()
    app.router.add_post("/v3/watch", mute)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    created: list[bool] = []
    try:
        async with EtcdClient([f"http://127.0.0.1:{port}"], timeout=0.5) as c:
            stream = c.watch(b"k", None, 0, on_created=lambda: created.append(True))
            with pytest.raises(EtcdUnavailable) as caught:
                async with aclosing(stream):
                    await anext(stream)
            assert not isinstance(caught.value, WatchIdle), caught.value
            assert not created
    finally:
        done.set()
        await runner.cleanup()


@bounded(20)
async def test_a_watch_says_when_it_is_created(client: EtcdClient) -> None:
    created: list[bool] = []
    stream = client.watch(b"c/", prefix_end(b"c/"), 0, on_created=lambda: created.append(True))
    async with aclosing(stream):
        waiting = asyncio.ensure_future(anext(stream))
        while not created:
            await asyncio.sleep(0.01)
        await client.put(b"c/1", b"v")
        batch = await waiting
        assert [e.kv.key for e in batch.events] == [b"c/1"] and created == [True]
