"""The sync loop, the desired state and the master client, in process, against a small
fake master on a real port: it records every request and fails on demand."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from master.model import KEEP, FieldError, canonical_document, decode_registration
from master.shared.daemon import cancel_and_wait
from sidecar import sync as sync_module
from sidecar.config import Config, default_instance, load_config
from sidecar.desired import Desired
from sidecar.master_client import IdConflict, MasterClient, MasterError
from sidecar.sync import SyncLoop, SyncMetrics
from tests.service_fixture import unused_port

DEADLINE: Final = 5.0
DOCUMENT: Final = {"openapi": "3.0.3", "info": {"version": "1", "title": "fake"}, "paths": {}}


@dataclass
class Seen:
    method: str
    path: str
    at: float
    headers: dict[str, str]
    body: bytes
    query: dict[str, str] = field(default_factory=dict)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def has_document(self) -> bool:
        return "openapi" in self.json


@dataclass
class FakeMaster:
    """PUT/DELETE /v1/services/{id} as the master does them (decoded by the real wire
    model, the document kept as the bytes sent, answered with its sha256), and the
    service's /openapi.json beside them."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    documents: dict[str, str | None] = field(default_factory=dict)  # id -> sha256
    failures: list[tuple[int, bytes]] = field(default_factory=list)  # next answers to PUT
    put_delay: float = 0.0
    delete_status: int = 200
    stale_sha256: str | None = None  # answer this digest once, as after a data loss
    document: Any = field(default_factory=lambda: DOCUMENT)
    document_failures: int = 0  # /openapi.json answers 503 this many times first
    document_gets: int = 0
    holders: dict[str, str | None] = field(default_factory=dict)  # id -> its instance
    critical: set[str] = field(default_factory=set)  # ids whose holder may be taken over
    delete_failures: int = 0  # DELETE answers 503 this many times first

    def puts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "PUT"]

    def fail(self, times: int, status: int = 503, answer: Any = None) -> None:
        text = json.dumps(answer) if answer is not None else "down"
        self.failures += [(status, text.encode())] * times

    async def put(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        await asyncio.sleep(self.put_delay)
        if self.failures:
            status, text = self.failures.pop(0)
            return web.Response(status=status, body=text, content_type="application/json")
        ident = request.match_info["id"]
        try:
            registration, change = decode_registration(seen.body, ident)
        except FieldError as exc:
            error = {"code": exc.code, "message": exc.message, "field": exc.field}
            return web.json_response({"error": error}, status=400)
        holder = self.holders.get(ident)
        if holder and registration.instance != holder and ident not in self.critical:
            return conflict(ident, holder)
        self.holders[ident] = registration.instance or holder
        self.critical.discard(ident)
        if change is None:
            self.documents[ident] = None
        elif change is not KEEP:
            self.documents[ident] = change.sha256  # type: ignore[union-attr]
        else:
            self.documents.setdefault(ident, None)
        sha256 = self.documents[ident]
        if self.stale_sha256 is not None:
            sha256, self.stale_sha256 = self.stale_sha256, None
        return web.json_response({"id": registration.id, "openapi_sha256": sha256})

    async def delete(self, request: web.Request) -> web.Response:
        await self._record(request)
        ident = request.match_info["id"]
        if self.delete_failures:
            self.delete_failures -= 1
            return web.Response(status=503, text="down")
        holder, instance = self.holders.get(ident), request.query.get("instance")
        if instance is not None and holder and instance != holder:
            return conflict(ident, holder)
        self.holders.pop(ident, None)
        if self.documents.pop(ident, "absent") == "absent":
            return web.json_response({"error": {"code": "not_found", "message": "no"}}, status=404)
        return web.json_response({}, status=self.delete_status)

    async def openapi(self, request: web.Request) -> web.Response:
        self.document_gets += 1
        if self.document_failures:
            self.document_failures -= 1
            return web.Response(status=503, text="starting")
        return web.json_response(self.document)

    async def _record(self, request: web.Request) -> Seen:
        body = await request.read()
        seen = Seen(
            request.method,
            request.path,
            time.monotonic(),
            dict(request.headers),
            body,
            dict(request.query),
        )
        self.seen.append(seen)
        return seen


def conflict(ident: str, holder: str) -> web.Response:
    """The master's answer for an id another instance holds."""
    message = (  # the master's words (master.registry.IdHeld)
        f"{ident!r} is held by {holder!r}, which is not critical; refused "
        "(a takeover is allowed once the holder is critical)"
    )
    error = {"code": "id_conflict", "message": message, "field": "id"}
    return web.json_response({"error": error}, status=409)


@pytest.fixture
async def fake() -> AsyncIterator[FakeMaster]:
    master = FakeMaster()
    app = web.Application()
    app.router.add_put("/v1/services/{id}", master.put)
    app.router.add_delete("/v1/services/{id}", master.delete)
    app.router.add_get("/openapi.json", master.openapi)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    master.url = f"http://127.0.0.1:{port}"
    yield master
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> tuple[float, float]:
    first, cap = 0.04, 0.3
    monkeypatch.setattr(sync_module, "BACKOFF_FIRST", first)
    monkeypatch.setattr(sync_module, "BACKOFF_CAP", cap)
    return first, cap


def make_config(
    tmp_path: Path,
    fake: FakeMaster,
    *,
    resync: float = 60.0,
    openapi: bool = True,
    master_urls: str | None = None,
    extra_master: str = "",
) -> Config:
    """A service file for the fake; `resync` below the file's 1s floor, for speed."""
    path = tmp_path / "service.yaml"
    openapi_line = f"  openapi: {fake.url}/openapi.json\n" if openapi else ""
    path.write_text(
        "service:\n  name: web\n  id: web-1\n  address: 127.0.0.1\n  port: 8080\n"
        f"  tags: [a]\n{openapi_line}"
        f"master:\n  url: {master_urls or fake.url}\n{extra_master}"
        "sidecar:\n  listen: 127.0.0.1:9599\n"
    )
    config = load_config(path)
    return dataclasses.replace(config, sidecar=dataclasses.replace(config.sidecar, resync=resync))


def make_loop(
    config: Config, session: aiohttp.ClientSession
) -> tuple[SyncLoop, Desired, CollectorRegistry]:
    registry = CollectorRegistry()
    desired = Desired(config)
    loop = SyncLoop(desired, MasterClient(session), session, SyncMetrics(registry))
    return loop, desired, registry


@asynccontextmanager
async def running(loop: SyncLoop) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(loop.run())
    try:
        yield task
    finally:
        await cancel_and_wait(task)


async def eventually(predicate: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout}s: {predicate}")


def with_tags(config: Config, *tags: str) -> Config:
    return dataclasses.replace(config, service=dataclasses.replace(config.service, tags=tags))


# --- the loop ----------------------------------------------------------------------------


async def test_backoff_grows_stays_under_the_cap_then_registers(
    fake: FakeMaster,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    fast_backoff: tuple[float, float],
) -> None:
    first, cap = fast_backoff
    failures = 7
    fake.fail(failures, 503, {"error": {"code": "unavailable", "message": "store is busy"}})
    loop, _, registry = make_loop(make_config(tmp_path, fake, openapi=False), session)
    async with running(loop):
        await eventually(lambda: loop.state.registered)
    times = [s.at for s in fake.puts()]
    assert len(times) == failures + 1
    gaps = [b - a for a, b in itertools.pairwise(times)]
    ceilings = [min(cap, first * 2**k) for k in range(failures)]
    # equal jitter: each wait is between half its ceiling and the ceiling (plus a round trip)
    for gap, ceiling in zip(gaps, ceilings, strict=True):
        assert ceiling / 2 - 0.005 <= gap <= ceiling + 0.1, (gaps, ceilings)
    assert max(gaps[:2]) < min(gaps[3:]), f"no growth: {gaps}"
    assert max(gaps) <= cap + 0.1, f"past the cap: {gaps}"
    assert loop.state.failures == 0 and loop.state.syncs == 1
    assert loop.state.last_error == f"{fake.url}: 503 store is busy"
    assert registry.get_sample_value("picoapi_sidecar_sync_failures_total") == failures
    assert registry.get_sample_value("picoapi_sidecar_syncs_total") == 1


async def test_a_config_change_is_sent_at_once_not_at_the_next_resync(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = make_config(tmp_path, fake, resync=60.0, openapi=False)
    loop, desired, _ = make_loop(config, session)
    async with running(loop):
        await eventually(lambda: loop.state.registered)
        await asyncio.sleep(0.2)
        assert len(fake.puts()) == 1, "nothing to send before the change"
        changed_at = time.monotonic()
        desired.update_config(with_tags(config, "a", "edited"))
        put = await eventually(lambda: len(fake.puts()) == 2 and fake.puts()[1])
    assert put.json["tags"] == ["a", "edited"]
    assert put.at - changed_at < 0.5


async def test_the_document_goes_once_then_no_more(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The document is sent as canonical bytes, once; the re-assertions that follow,
    at every resync, carry no document, and each re-fetches it from the service."""
    loop, desired, _ = make_loop(make_config(tmp_path, fake, resync=0.2), session)
    async with running(loop):
        await eventually(lambda: fake.documents.get("web-1"))
        settled = len(fake.puts())
        gets = fake.document_gets
        await asyncio.sleep(1.0)  # about five resyncs
        window = fake.puts()[settled:]
    with_document = [p for p in fake.puts() if p.has_document]
    assert len(with_document) == 1
    assert desired.document is not None
    assert with_document[0].body.endswith(b',"openapi":' + canonical_document(DOCUMENT) + b"}")
    assert fake.documents["web-1"] == desired.document.sha256
    assert len(window) >= 3, f"the resync ran {len(window)} times in 1s at 0.2s"
    assert not any(p.has_document for p in window)
    assert fake.document_gets - gets >= 3


@pytest.mark.parametrize("loss", ["emptied", "other_digest"])
async def test_the_document_is_sent_again_when_the_master_lacks_it(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path, loss: str
) -> None:
    loop, desired, _ = make_loop(make_config(tmp_path, fake, resync=60.0), session)
    async with running(loop):
        await eventually(lambda: fake.documents.get("web-1"))
        before = len(fake.puts())
        if loss == "emptied":
            fake.documents.clear()  # restarted on an empty store
        else:
            fake.stale_sha256 = "0" * 64
        desired.mark_dirty()  # a re-assertion now, instead of in a minute
        await eventually(lambda: len(fake.puts()) == before + 2)
        await asyncio.sleep(0.2)
    again = fake.puts()[before:]
    assert len(again) == 2, "one round: the PUT, then the document at once"
    assert not again[0].has_document and again[1].has_document
    assert desired.document is not None
    assert fake.documents["web-1"] == desired.document.sha256


async def test_the_document_is_fetched_again_soon_while_the_service_is_not_up(
    fake: FakeMaster,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    fast_backoff: tuple[float, float],
) -> None:
    fake.document_failures = 3
    loop, desired, _ = make_loop(make_config(tmp_path, fake, resync=60.0), session)
    async with running(loop):
        await eventually(lambda: fake.documents.get("web-1"), timeout=3.0)
    assert fake.document_gets == 4
    assert loop.state.openapi_error is None
    assert desired.document is not None and fake.documents["web-1"] == desired.document.sha256


async def test_a_document_no_longer_described_is_removed_at_the_master(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = make_config(tmp_path, fake, resync=60.0)
    loop, desired, _ = make_loop(config, session)
    async with running(loop):
        await eventually(lambda: fake.documents.get("web-1"))
        desired.update_config(
            dataclasses.replace(config, service=dataclasses.replace(config.service, openapi=None))
        )
        await eventually(lambda: fake.puts()[-1].json.get("openapi", "absent") is None)
    assert fake.documents["web-1"] is None and desired.document is None


async def test_drain_deletes_and_nothing_registers_after(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    loop, _, _ = make_loop(make_config(tmp_path, fake, resync=0.1, openapi=False), session)
    async with running(loop) as task:
        await eventually(lambda: loop.state.registered)
        fake.put_delay = 0.3
        await eventually(lambda: fake.seen[-1].method == "PUT" and len(fake.puts()) >= 2)
        assert await loop.drain()  # while that PUT is in flight
        await eventually(task.done, timeout=1.0)
        await asyncio.sleep(0.3)
    methods = [s.method for s in fake.seen]
    assert methods[-1] == "DELETE" and methods.count("DELETE") == 1
    assert not loop.state.registered and loop.state.drained
    assert "web-1" not in fake.documents


async def test_deregister_reports_a_master_that_is_away(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = unused_port()
    dead = f"http://127.0.0.1:{port}"
    loop, _, _ = make_loop(make_config(tmp_path, FakeMaster(url=dead), openapi=False), session)
    assert await loop.deregister() is False
    assert loop.state.last_error == f"{dead}: connection refused by 127.0.0.1:{port}"


# --- the desired state -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("described", "held", "master", "sent"),
    [
        (True, False, None, "absent"),  # nothing fetched yet: say nothing of it
        (True, True, None, "document"),
        (True, True, "ours", "absent"),
        (True, True, "other", "document"),
        (False, False, None, "absent"),
        (False, False, "other", "null"),  # no longer described: the master drops its copy
    ],
)
def test_what_the_body_says_of_the_document(
    tmp_path: Path, described: bool, held: bool, master: str | None, sent: str
) -> None:
    config = make_config(tmp_path, FakeMaster(url="http://127.0.0.1:1"), openapi=described)
    desired = Desired(config)
    if held:
        assert desired.set_document(DOCUMENT) and desired.take_dirty()
    assert desired.document is None or desired.document.body == canonical_document(DOCUMENT)
    sha256 = {"ours": desired.document and desired.document.sha256, "other": "f" * 64}.get(
        master or ""
    )
    body = json.loads(desired.body(sha256))
    shown = "absent" if "openapi" not in body else "null" if body["openapi"] is None else "document"
    assert shown == sent
    assert desired.agrees(sha256) == (sent == "absent")


def test_the_same_document_again_is_no_change(tmp_path: Path) -> None:
    desired = Desired(make_config(tmp_path, FakeMaster(url="http://127.0.0.1:1")))
    assert desired.set_document(DOCUMENT) and desired.take_dirty()
    reordered = {"paths": {}, "info": {"title": "fake", "version": "1"}, "openapi": "3.0.3"}
    assert not desired.set_document(reordered) and not desired.take_dirty()
    assert desired.set_document({**DOCUMENT, "paths": {"/x": {}}}) and desired.take_dirty()


# --- the master client -------------------------------------------------------------------


async def test_urls_are_tried_in_order_with_the_token(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{unused_port()}"
    config = make_config(
        tmp_path, fake, master_urls=f"[{dead}, {fake.url}]", extra_master="  token: s3cret\n"
    )
    desired = Desired(config, "host-a:9501")
    client = MasterClient(session)
    stored = await client.put(config.master, "web-1", desired.body(None))
    assert stored.url == fake.url and stored.openapi_sha256 is None
    assert fake.seen[0].headers["Authorization"] == "Bearer s3cret"
    assert await client.delete(config.master, "web-1", "host-a:9501") == fake.url
    assert fake.seen[-1].query == {"instance": "host-a:9501"}
    assert await client.delete(config.master, "web-1", "host-a:9501") == fake.url  # 404: gone


@pytest.mark.parametrize(
    ("status", "answer", "reason"),
    [
        (
            400,
            {"error": {"code": "invalid_field", "message": "bad", "field": "port"}},
            "bad (port)",
        ),
        (401, {"error": {"code": "unauthorized", "message": "no token"}}, "no token"),
        (502, None, "down"),
    ],
)
async def test_errors_in_the_masters_words(
    fake: FakeMaster,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    status: int,
    answer: Any,
    reason: str,
) -> None:
    config = make_config(tmp_path, fake)
    fake.fail(1, status, answer)
    with pytest.raises(MasterError) as caught:
        await MasterClient(session).put(config.master, "web-1", b"{}")
    assert str(caught.value) == f"{fake.url}: {status} {reason}"


async def test_a_master_that_does_not_answer_in_time(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = make_config(tmp_path, fake)
    fake.put_delay = 1.0
    started = time.monotonic()
    with pytest.raises(MasterError) as caught:
        await MasterClient(session, timeout=0.2).put(config.master, "web-1", b"{}")
    assert str(caught.value) == f"{fake.url}: no answer within 200ms"
    assert time.monotonic() - started < 0.8


# --- who holds the id ------------------------------------------------------------------------


async def test_the_registration_names_this_sidecar_as_its_holder(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = make_config(tmp_path, fake, openapi=False)
    desired = Desired(config)
    assert desired.instance == default_instance(9599) == f"{socket.gethostname()}:9599"
    loop = SyncLoop(desired, MasterClient(session), session)
    assert await loop.sync()
    assert fake.puts()[0].json["instance"] == desired.instance
    assert fake.holders["web-1"] == desired.instance
    # a reload never changes who holds it, whatever the file says now
    desired.update_config(with_tags(config, "b"))
    assert desired.registration.instance == desired.instance


async def test_an_id_held_by_another_instance_is_asked_for_at_the_resync_pace_then_taken_over(
    fake: FakeMaster,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    fast_backoff: tuple[float, float],
) -> None:
    """The holder keeps the id: the sidecar logs id_conflict once (naming the holder),
    shows it in its state, never exits, and asks again at every resync (never at the fast
    backoff of an unreachable master), so once the holder turns critical it takes over."""
    resync = 0.3
    fake.holders["web-1"] = "other-host:9501"
    loop, desired, registry = make_loop(make_config(tmp_path, fake, resync=resync), session)
    with capture_logs() as logs:
        async with running(loop) as task:
            await eventually(lambda: len(fake.puts()) >= 4, timeout=3.0)
            conflict = loop.state.conflict
            assert conflict is not None and not task.done()
            assert not loop.state.registered
            fake.critical.add("web-1")  # the master's checks found the holder critical
            await eventually(lambda: loop.state.registered, timeout=3.0)
    gaps = [b.at - a.at for a, b in itertools.pairwise(fake.puts())]
    # The first gap is the document, fetched just after the first PUT: a change, sent at once.
    assert min(gaps[1:]) >= resync * (1 - sync_module.RESYNC_JITTER) - 0.01, gaps
    assert (conflict.holder, conflict.master_url) == ("other-host:9501", fake.url)
    assert conflict.attempts >= 4
    assert "is held by 'other-host:9501'" in conflict.message
    refused = [e for e in logs if e["event"] == "id_conflict"]
    assert len(refused) == 1, "said once per holder"
    assert refused[0]["log_level"] == "warning" and refused[0]["holder"] == "other-host:9501"
    assert refused[0]["instance"] == desired.instance
    assert not [e for e in logs if e["event"] == "sync_failed"]
    registered = [e for e in logs if e["event"] == "registered"]
    assert registered[-1]["taken_over_from"] == "other-host:9501"
    assert loop.state.conflict is None and fake.holders["web-1"] == desired.instance
    assert loop.state.reachable is True
    assert desired.document is not None
    assert fake.documents["web-1"] == desired.document.sha256, "sent with the takeover"
    assert registry.get_sample_value("picoapi_sidecar_sync_failures_total") == len(gaps)


async def test_deregister_names_the_instance_and_leaves_another_holders_id(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake.holders["web-1"], fake.documents["web-1"] = "other-host:9501", None
    loop, desired, _ = make_loop(make_config(tmp_path, fake, openapi=False), session)
    with capture_logs() as logs:
        assert await loop.deregister(), "nothing of ours to remove: done"
    delete = fake.seen[-1]
    assert (delete.method, delete.query) == ("DELETE", {"instance": desired.instance})
    assert fake.holders["web-1"] == "other-host:9501", "the holder keeps it"
    assert [e["event"] for e in logs] == ["deregister_not_held"]
    assert logs[0]["holder"] == "other-host:9501"


async def test_an_edited_id_registers_the_new_one_and_deregisters_the_old(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = make_config(tmp_path, fake)
    loop, desired, _ = make_loop(config, session)
    async with running(loop):
        await eventually(lambda: fake.documents.get("web-1"))
        fake.delete_failures = 1  # the first DELETE of the old id fails: tried again
        before = len(fake.seen)
        desired.update_config(
            dataclasses.replace(config, service=dataclasses.replace(config.service, id="web-2"))
        )
        await eventually(lambda: "web-2" in fake.documents)
        await eventually(lambda: fake.seen[-1].method == "DELETE")
        assert [(s.method, s.path) for s in fake.seen[before:]] == [
            ("PUT", "/v1/services/web-2"),
            ("DELETE", "/v1/services/web-1"),
        ]
        assert desired.retired == [("web-1", config.master)], "kept until it is gone"
        desired.mark_dirty()  # the next round (a resync) tries again
        await eventually(lambda: not desired.retired)
    new_put, old_delete = fake.seen[before], fake.seen[-1]
    assert new_put.has_document, "the master holds no document for a new id"
    assert old_delete.query == {"instance": desired.instance}
    assert "web-1" not in fake.holders and "web-1" not in fake.documents
    assert fake.holders["web-2"] == desired.instance
    assert loop.state.registered and loop.state.master_url == fake.url


async def test_an_id_edited_back_before_a_sync_is_not_deregistered(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = make_config(tmp_path, fake, openapi=False)
    loop, desired, _ = make_loop(config, session)
    assert await loop.sync()
    other = dataclasses.replace(config, service=dataclasses.replace(config.service, id="web-2"))
    desired.update_config(other)
    desired.update_config(config)
    assert desired.retired == [("web-2", config.master)]
    assert await loop.sync()
    assert "web-1" in fake.holders
    assert [s.method + " " + s.path for s in fake.seen[1:]] == [
        "PUT /v1/services/web-1",
        "DELETE /v1/services/web-2",  # never registered: a 404, gone either way
    ]
    assert desired.retired == []


async def test_shutdown_deregisters_an_old_id_still_retired(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = make_config(tmp_path, fake, openapi=False)
    loop, desired, _ = make_loop(config, session)
    assert await loop.sync()
    fake.fail(1)  # the PUT of the new id fails: no master answered, the old id stays
    desired.update_config(
        dataclasses.replace(config, service=dataclasses.replace(config.service, id="web-2"))
    )
    assert not await loop.sync()
    assert desired.retired and "web-1" in fake.holders
    assert await loop.deregister()
    assert desired.retired == [] and "web-1" not in fake.holders


@pytest.mark.parametrize(
    ("message", "holder"),
    [
        (
            "'web-1' is held by 'host-a:9501', which is not critical; refused by 'b:1'",
            "host-a:9501",
        ),
        ("'web-1' is held by \"it's:9501\", which is not critical", "it's:9501"),
        ("web-1 is held by host-a:9501 (not critical)", "host-a:9501"),
        ("web-1 is held by host-a:9501, which is not critical", "host-a:9501"),
        ("the id is taken", None),
    ],
)
def test_the_holder_is_read_off_the_masters_message(message: str, holder: str | None) -> None:
    assert IdConflict([], "http://m:9500", message).holder == holder
