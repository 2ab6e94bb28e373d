"""The registry in-process: the identical-PUT rule, documents, the check-url guard, waits,
listings, and one write at a time per id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from master.model import (
    HISTORY_PER_SERVICE,
    KEEP,
    TRANSITION_OUTPUT_MAX,
    CheckResult,
    CheckSpec,
    Document,
    Registration,
    Status,
    canonical_document,
)
from master.registry import DocumentsFull, IdHeld, Registry
from master.store.memory import MemoryStore

DOC = {"openapi": "3.0.3", "info": {"title": "web", "version": "1"}, "paths": {}}


def registration(ident: str = "web-1", **fields: Any) -> Registration:
    base: dict[str, Any] = {
        "id": ident,
        "name": "web",
        "address": "10.0.0.5",
        "port": 8080,
        "tags": ("a", "b"),
        "meta": {"team": "data"},
    }
    base.update(fields)
    return Registration(**base)


def document(**changes: Any) -> Document:
    return Document.of(canonical_document({**DOC, **changes}))


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    registry = Registry(MemoryStore())
    await registry.load()
    yield registry
    registry.close()


def listed(registry: Registry, **query: Any) -> list[str]:
    body, _ = registry.listing(**query)
    return [record["id"] for record in json.loads(body)["services"]]


async def test_identical_put_changes_nothing_not_even_the_index(registry: Registry) -> None:
    first, changed = await registry.put(registration(), document())
    assert changed
    index = registry.index
    again, changed = await registry.put(registration(), KEEP)
    assert not changed and again is first and registry.index == index
    again, changed = await registry.put(registration(), document())  # the same document
    assert not changed and registry.index == index
    moved, changed = await registry.put(registration(tags=("a", "c")), KEEP)
    assert changed and registry.index > index
    assert moved.registered_at == first.registered_at
    assert moved.updated_at >= first.updated_at


async def test_absent_document_keeps_it_and_null_removes_it(registry: Registry) -> None:
    record, _ = await registry.put(registration(), document())
    assert record.openapi_sha256 == document().sha256
    kept, _ = await registry.put(registration(port=9090), KEEP)
    assert kept.openapi_sha256 == document().sha256
    assert registry.document(kept.openapi_sha256) == document()
    removed, changed = await registry.put(registration(port=9090), None)
    assert changed and removed.openapi_sha256 is None
    assert registry.document_bytes() == 0


async def test_a_document_is_kept_once_and_dropped_with_its_last_user(registry: Registry) -> None:
    shared = document()
    for n in range(5):
        await registry.put(registration(f"web-{n}"), shared)
    assert registry.document_bytes() == len(shared.body)  # five users, one copy
    snapshot = await registry._store.open()
    assert list(snapshot.documents) == [shared.sha256]
    for n in range(4):
        await registry.delete(f"web-{n}")
    assert registry.document(shared.sha256) == shared
    await registry.put(registration("web-4"), document(info={"title": "web", "version": "2"}))
    assert registry.document(shared.sha256) is None
    assert shared.sha256 not in (await registry._store.open()).documents
    record = registry.get("web-4")
    assert record is not None
    assert json.loads(b"".join(registry.with_document(record)))["openapi"]["info"]["version"] == "2"


async def test_a_new_check_url_resets_the_status_a_result_for_the_old_one_is_dropped(
    registry: Registry,
) -> None:
    old_url = "http://10.0.0.5:9501/health"
    await registry.put(registration(check=CheckSpec(url=old_url)), KEEP)
    await registry.record_check(
        "web-1", old_url, Status.CRITICAL, CheckResult(Status.CRITICAL, "down", 1.0)
    )
    assert registry.get("web-1").status is Status.CRITICAL  # type: ignore[union-attr]
    same_url, _ = await registry.put(registration(check=CheckSpec(url=old_url), port=1), KEEP)
    assert same_url.status is Status.CRITICAL  # a replace keeps the status...
    new_url = "http://10.0.0.6:9501/health"
    moved, _ = await registry.put(registration(check=CheckSpec(url=new_url)), KEEP)
    assert moved.status is Status.UNKNOWN and moved.last_check is None  # ...unless the url moved
    late = await registry.record_check(
        "web-1", old_url, Status.PASSING, CheckResult(Status.PASSING, "ok", 1.0)
    )
    assert late is None and registry.get("web-1").status is Status.UNKNOWN  # type: ignore[union-attr]


async def test_a_confirming_check_moves_no_index(registry: Registry) -> None:
    url = "http://10.0.0.5:9501/health"
    await registry.put(registration(check=CheckSpec(url=url)), KEEP)
    await registry.record_check("web-1", url, Status.PASSING, CheckResult(Status.PASSING, "a", 1))
    index = registry.index
    await registry.record_check("web-1", url, Status.PASSING, CheckResult(Status.PASSING, "b", 1))
    assert registry.index == index
    assert registry.get("web-1").last_check.output == "b"  # type: ignore[union-attr]
    await registry.record_check("web-1", url, Status.WARNING, CheckResult(Status.WARNING, "c", 1))
    assert registry.index > index


async def test_waits_wake_on_a_change_time_out_and_answer_an_unknown_index_at_once(
    registry: Registry,
) -> None:
    await registry.put(registration(), KEEP)
    index = registry.index
    waiters = [asyncio.create_task(registry.wait(index, 5.0)) for _ in range(20)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    await registry.put(registration(port=1), KEEP)
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1.0) == [index + 1] * 20
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await registry.wait(registry.index, 0.2) == registry.index
    assert loop.time() - started >= 0.19
    assert await asyncio.wait_for(registry.wait(registry.index + 100, 5.0), 0.5) == registry.index


async def test_listings_follow_changes_and_keep_their_answer_until_then(
    registry: Registry,
) -> None:
    await registry.put(registration("a", tags=("x",)), KEEP)
    await registry.put(registration("b", tags=("x", "y")), KEEP)
    assert listed(registry, tags=["x"]) == ["a", "b"]
    first, _ = registry.listing(tags=["x"])
    again, _ = registry.listing(tags=["x"])
    assert again is first  # kept: the same bytes
    await registry.delete("a")
    assert listed(registry, tags=["x"]) == ["b"]
    assert listed(registry) == ["b"]
    assert listed(registry, name="") == []  # an empty name is a filter, not "everything"
    _, is_gzipped = registry.listing(gzipped=True)
    assert not is_gzipped  # too small to be worth it


async def test_writes_to_one_id_take_turns_and_a_cancelled_one_hands_on(
    registry: Registry,
) -> None:
    store = registry._store
    started = asyncio.Event()
    release = asyncio.Event()
    real_put = store.put

    async def slow_put(*args: Any, **kwargs: Any) -> int:
        started.set()
        await release.wait()
        return await real_put(*args, **kwargs)

    store.put = slow_put  # type: ignore[method-assign]
    first = asyncio.create_task(registry.put(registration(port=1), KEEP))
    await started.wait()
    second = asyncio.create_task(registry.put(registration(port=2), KEEP))
    third = asyncio.create_task(registry.put(registration(port=3), KEEP))
    await asyncio.sleep(0.05)
    second.cancel()  # cancelled while waiting its turn
    store.put = real_put  # type: ignore[method-assign]
    release.set()
    await first
    record, _ = await asyncio.wait_for(third, 1.0)  # not stuck behind the cancelled one
    assert record.port == 3
    assert second.cancelled()
    assert registry._busy == {}


async def test_an_id_is_held_by_its_instance_until_it_is_critical(registry: Registry) -> None:
    url = "http://10.0.0.5:9501/health"
    held, _ = await registry.put(registration(check=CheckSpec(url=url), instance="a:9501"), KEEP)
    index = registry.index
    with pytest.raises(IdHeld, match="held by 'a:9501'"):
        await registry.put(registration(port=1, instance="b:9501"), KEEP)
    assert registry.get("web-1") == held and registry.index == index  # the holder keeps it
    kept, _ = await registry.put(registration(check=CheckSpec(url=url), port=2), KEEP)
    assert kept.instance == "a:9501"  # a PUT naming no instance (an operator's) keeps it
    with pytest.raises(IdHeld):
        await registry.delete("web-1", instance="b:9501")
    assert registry.get("web-1") is not None
    await registry.record_check(
        "web-1", url, Status.CRITICAL, CheckResult(Status.CRITICAL, "gone", 1.0)
    )
    taken, _ = await registry.put(registration(instance="b:9501"), KEEP)  # critical: taken
    assert taken.instance == "b:9501"
    assert await registry.delete("web-1", instance="b:9501") is not None


async def test_a_deregistration_without_instance_is_an_operators(registry: Registry) -> None:
    await registry.put(registration(instance="a:9501"), KEEP)
    assert await registry.delete("web-1") is not None


async def test_documents_have_a_cap_in_all_and_a_shared_one_counts_once() -> None:
    registry = Registry(MemoryStore(), max_document_bytes=1 << 20)
    await registry.load()
    big = document(info={"title": "x" * 600_000, "version": "1"})
    await registry.put(registration("a"), big)
    await registry.put(registration("b"), big)  # the same document: no more bytes
    other = document(info={"title": "y" * 600_000, "version": "2"})
    with pytest.raises(DocumentsFull, match="past 1048576 bytes"):
        await registry.put(registration("c"), other)
    assert registry.get("c") is None
    await registry.delete("a")
    await registry.put(registration("b"), other)  # b lets go of big: room for the other
    assert registry.document_bytes() == len(other.body)


async def test_each_status_change_is_on_the_timeline_since_when_and_why(
    registry: Registry,
) -> None:
    url = "http://10.0.0.5:9501/health"
    record, _ = await registry.put(registration(check=CheckSpec(url=url)), KEEP)
    assert (record.status, record.status_reason) == (Status.UNKNOWN, "not checked yet")
    steps = [
        (Status.PASSING, "200 ok"),
        (Status.CRITICAL, "connection refused by 127.0.0.1:8081"),
        (Status.CRITICAL, "connection refused by 127.0.0.1:8081"),  # no change: not listed
        (Status.PASSING, "200 ok"),
    ]
    for status, output in steps:
        await registry.record_check("web-1", url, status, CheckResult(status, output, 2.5))
    record = registry.get("web-1")
    assert record is not None
    assert [(t.from_, t.to) for t in record.history] == [
        (Status.UNKNOWN, Status.PASSING),
        (Status.PASSING, Status.CRITICAL),
        (Status.CRITICAL, Status.PASSING),
    ]
    assert record.history[1].output == "connection refused by 127.0.0.1:8081"
    assert record.history[1].duration_ms == 2.5
    assert record.status_changed_at == record.history[-1].at
    assert record.status_reason == "200 ok" and not record.flapping
    answer = json.loads(registry.encoded(record))
    assert "history" not in answer and answer["status_changed_at"].endswith("Z")


async def test_a_flapping_service_is_flagged_and_its_timeline_bounded(
    registry: Registry,
) -> None:
    url = "http://10.0.0.5:9501/health"
    await registry.put(registration(check=CheckSpec(url=url)), KEEP)
    for n in range(30):
        status = Status.PASSING if n % 2 else Status.CRITICAL
        await registry.record_check("web-1", url, status, CheckResult(status, f"#{n}", 1.0))
    record = registry.get("web-1")
    assert record is not None and record.flapping
    assert len(record.history) == HISTORY_PER_SERVICE  # oldest dropped first
    assert record.history[-1].output == "#29"


async def test_the_timeline_keeps_the_head_of_a_long_reason(registry: Registry) -> None:
    """The current reason keeps the whole output; each change on the timeline its head, so
    a service's timeline stays a few KiB however verbose its check."""
    url = "http://10.0.0.5:9501/health"
    await registry.put(registration(check=CheckSpec(url=url)), KEEP)
    long = "db down: " + "x" * 3000
    await registry.record_check(
        "web-1", url, Status.CRITICAL, CheckResult(Status.CRITICAL, long, 1)
    )
    record = registry.get("web-1")
    assert record is not None and record.status_reason == long
    assert record.history[-1].output == long[:TRANSITION_OUTPUT_MAX]


async def test_draining_is_a_status_checks_do_not_undo(registry: Registry) -> None:
    url = "http://10.0.0.5:9501/health"
    await registry.put(registration(check=CheckSpec(url=url)), KEEP)
    await registry.record_check("web-1", url, Status.PASSING, CheckResult(Status.PASSING, "", 1))
    drained, _ = await registry.put(registration(check=CheckSpec(url=url), draining=True), KEEP)
    assert drained.status is Status.DRAINING
    assert drained.history[-1].to is Status.DRAINING
    await registry.record_check("web-1", url, Status.PASSING, CheckResult(Status.PASSING, "", 1))
    assert registry.get("web-1").status is Status.DRAINING  # type: ignore[union-attr]
    assert [r.id for r in registry.query(status=Status.PASSING)] == []


# --- documents and writes in flight (a store that commits later: SQLite's queue) ----------


@pytest.fixture
async def sqlite_registry(tmp_path: Any) -> AsyncIterator[Registry]:
    from master.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "r.db", "sqlite:///r.db")
    registry = Registry(store, max_document_bytes=4096)
    await registry.load()
    yield registry
    registry.close()
    await store.close()


@pytest.mark.parametrize("first", ["drop", "name"])
async def test_a_document_dropped_while_another_write_names_it_is_kept(
    sqlite_registry: Registry, first: str
) -> None:
    """A replica registers with the document another one lets go of at the same moment
    (a rolling restart): the document must stay, in memory and in the store."""
    shared = document()
    await sqlite_registry.put(registration("web-1"), shared)
    drop = sqlite_registry.delete("web-1")
    name = sqlite_registry.put(registration("web-2"), shared)
    await asyncio.gather(*((drop, name) if first == "drop" else (name, drop)))
    record = sqlite_registry.get("web-2")
    assert record is not None and record.openapi_sha256 == shared.sha256
    assert sqlite_registry.document(shared.sha256) == shared
    stored = await sqlite_registry._store.open()
    assert shared.sha256 in stored.documents  # still there after a restart


async def test_concurrent_new_documents_respect_the_cap(sqlite_registry: Registry) -> None:
    docs = [document(info={"title": "x" * 1500, "version": str(n)}) for n in range(4)]
    assert all(1500 < len(d.body) < 2048 for d in docs)
    results = await asyncio.gather(
        *(sqlite_registry.put(registration(f"web-{n}"), d) for n, d in enumerate(docs)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, DocumentsFull) for r in results) == 2
    assert sqlite_registry.document_bytes() <= sqlite_registry.max_document_bytes


async def test_the_same_new_document_in_flight_twice_counts_once(
    sqlite_registry: Registry,
) -> None:
    big = document(info={"title": "x" * 2500, "version": "1"})
    await asyncio.gather(*(sqlite_registry.put(registration(f"web-{n}"), big) for n in range(3)))
    assert sqlite_registry.document_bytes() == len(big.body)
    assert sqlite_registry._incoming == {} and sqlite_registry._naming == {}


async def test_a_reload_that_removes_a_name_wakes_its_watchers(registry: Registry) -> None:
    from master.store.base import Change

    await registry.put(registration("web-1"), KEEP)
    index = registry.name_index("web")
    waiter = asyncio.create_task(registry.wait_name("web", index, 5.0))
    await asyncio.sleep(0.01)
    registry._apply(Change(registry.index + 1, {}, {}, whole=True))  # the store is empty now
    assert registry.get("web-1") is None
    assert await asyncio.wait_for(waiter, 1.0) == index + 1
    assert registry.name_index("web") == index + 1


async def test_a_rebuilt_answer_is_the_most_recently_asked(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from master import registry as module

    for n in range(3):
        await registry.put(registration(f"web-{n}", tags=(f"t{n}",)), KEEP)
    one = len(registry.listing(tags=["t0"])[0])
    monkeypatch.setattr(module, "ANSWER_BYTES_MAX", 2 * one + 10)
    registry.listing(tags=["t1"])
    await registry.put(registration("web-9", tags=("t9",)), KEEP)  # the index moves
    registry.listing(tags=["t0"])  # rebuilt: now the newest
    registry.listing(tags=["t2"])  # over the bound: the least recently asked (t1) goes
    assert list(registry._answers) == [(("t0",), None, None), (("t2",), None, None)]
    assert registry._answer_bytes <= module.ANSWER_BYTES_MAX


async def test_a_stored_document_no_record_names_is_not_held_at_load(tmp_path: Any) -> None:
    """Two records leaving one document at once each see the other still naming it, so
    neither drops it from the store: at the next start it must not count against the cap."""
    from master.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "r.db", "sqlite:///r.db")
    registry = Registry(store)
    await registry.load()
    shared, kept = document(), document(info={"title": "kept", "version": "1"})
    await registry.put(registration("web-1"), shared)
    await registry.put(registration("web-2"), shared)
    await registry.put(registration("web-3"), kept)
    await asyncio.gather(registry.delete("web-1"), registry.delete("web-2"))
    registry.close()
    await store.close()
    store = SQLiteStore(tmp_path / "r.db", "sqlite:///r.db")
    again = Registry(store)
    await again.load()
    try:
        assert again.document(shared.sha256) is None
        assert again.document(kept.sha256) == kept
        assert again.document_bytes() == len(kept.body)
    finally:
        again.close()
        await store.close()
