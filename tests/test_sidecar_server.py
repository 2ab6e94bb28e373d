"""The sidecar's HTTP surface, in process on a real port: who may POST /drain (loopback
callers, or callers with a token of `sidecar.token_file`), the one JSON error shape, and
what /status says of the master (reachable, still checking) and of an id held elsewhere."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from master.shared import tokens
from sidecar import server as server_module
from sidecar.checks import SharedCheck, build_check
from sidecar.config import Config, load_config
from sidecar.desired import Desired
from sidecar.discovery import ANSWER_MAX
from sidecar.master_client import MasterClient
from sidecar.server import Sidecar, SidecarMetrics, build_server, guard_and_render
from sidecar.sync import SyncLoop
from sidecar.watch import ConfigWatcher
from tests import consumer_fixture, service_fixture, test_sidecar_sync
from tests.conftest import Master, http_request, wait_until
from tests.consumer_fixture import Sidecar as ProcessSidecar
from tests.consumer_fixture import status_of
from tests.service_fixture import NodeService, unused_port
from tests.test_sidecar_sync import FakeMaster, eventually

fake = test_sidecar_sync.fake  # bound, not imported: no F811 on uses
session = test_sidecar_sync.session
start_sidecar = consumer_fixture.start_sidecar
node_service = service_fixture.node_service

TOKEN: Final = "drain-t0ken-8c1f"
OTHER_HOST: Final = "192.0.2.7"  # TEST-NET-1: only ever a mocked peer address, never dialled
MASTER_AGENT: Final = {"User-Agent": "picoapi-master-health-check"}


def service_file(tmp_path: Path, fake: FakeMaster, sidecar_extra: str = "") -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(
        "service:\n  name: web\n  id: web-1\n  address: 127.0.0.1\n  port: 8080\n"
        f"master:\n  url: {fake.url}\n"
        f"sidecar:\n  listen: 127.0.0.1:9599\n{sidecar_extra}"
    )
    return path


def make_sidecar(config: Config, session: aiohttp.ClientSession) -> Sidecar:
    desired = Desired(config, "this-host:9599")
    sync = SyncLoop(desired, MasterClient(session), session)
    watcher = ConfigWatcher(config.path, config, desired.update_config)
    check = SharedCheck(build_check(config.check, session))
    return Sidecar(str(config.path), sync, check, watcher, SidecarMetrics())


@asynccontextmanager
async def serving(sidecar: Sidecar) -> AsyncIterator[str]:
    runner = web.AppRunner(build_server(sidecar), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def ask(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    async with session.request(method, url, headers=headers) as answer:
        body = await answer.json(content_type=None) if method != "HEAD" else None
        return answer.status, dict(answer.headers), body


async def as_caller(
    sidecar: Sidecar, remote: str, method: str, path: str, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """A request through the guard as if it came from `remote`: the peer address is what
    the guard reads, and no other address than loopback is ever sent a packet here."""
    app = build_server(sidecar)
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda key, default=None: (
        (remote, 40000) if key == "peername" else default
    )
    request = make_mocked_request(method, path, headers=headers, app=app, transport=transport)
    assert request.remote == remote

    async def handler(_: web.Request) -> web.Response:
        return web.json_response({"handled": True})

    return await guard_and_render(request, handler)


def error_of(answer: web.StreamResponse) -> dict[str, str]:
    assert isinstance(answer, web.Response) and answer.content_type == "application/json"
    assert answer.text is not None
    return dict(json.loads(answer.text)["error"])


# --- /drain: POST only, and who may ----------------------------------------------------------


async def test_get_drain_is_405_with_allow_post_and_drains_nothing(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sidecar = make_sidecar(load_config(service_file(tmp_path, fake), {}), session)
    async with serving(sidecar) as url:
        status, headers, body = await ask(session, "GET", f"{url}/drain")
        assert status == 405 and headers["Allow"] == "POST"
        assert body == {
            "error": {
                "code": "method_not_allowed",
                "message": "GET /drain: not allowed; use POST",
            }
        }
        status, _, body = await ask(session, "GET", f"{url}/nowhere")
        assert status == 404
        assert body == {"error": {"code": "not_found", "message": "no such path: /nowhere"}}
        status, headers, _ = await ask(session, "PUT", f"{url}/health")
        assert status == 405 and "GET" in headers["Allow"]
    assert not sidecar.sync.state.drained and fake.seen == []


async def test_without_a_token_file_loopback_callers_may_drain(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sidecar = make_sidecar(load_config(service_file(tmp_path, fake), {}), session)
    async with serving(sidecar) as url:
        status, _, body = await ask(session, "POST", f"{url}/drain")
    assert status == 200 and body == {"drained": True, "service_id": "web-1"}
    assert [(s.method, s.query) for s in fake.seen] == [("DELETE", {"instance": "this-host:9599"})]


@pytest.mark.parametrize("remote", [OTHER_HOST, "10.0.0.9", "::ffff:10.0.0.9", "fd00::9"])
async def test_without_a_token_file_other_callers_are_forbidden(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path, remote: str
) -> None:
    sidecar = make_sidecar(load_config(service_file(tmp_path, fake), {}), session)
    answer = await as_caller(sidecar, remote, "POST", "/drain")
    assert answer.status == 403
    assert error_of(answer) == {
        "code": "forbidden",
        "message": "only loopback callers may POST /drain (give the sidecar a "
        "sidecar.token_file to let others in with a token)",
    }
    # a token does not open the door while no token file names it
    answer = await as_caller(
        sidecar, remote, "POST", "/drain", {"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status == 403
    # reads stay open to everyone
    assert (await as_caller(sidecar, remote, "GET", "/status")).status == 200


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"])
async def test_every_loopback_address_is_loopback(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path, remote: str
) -> None:
    sidecar = make_sidecar(load_config(service_file(tmp_path, fake), {}), session)
    assert (await as_caller(sidecar, remote, "POST", "/drain")).status == 200


async def test_with_a_token_file_every_caller_needs_a_token_loopback_too(
    fake: FakeMaster,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token means "only with the token": also from loopback, which every container of
    a pod and every local process shares (and which the service may be made to call)."""
    monkeypatch.setattr(tokens, "RECHECK_SECONDS", 0.0)
    (tmp_path / "drain-tokens").write_text(f"# who may drain\n{TOKEN}\n")
    config = load_config(service_file(tmp_path, fake, "  token_file: drain-tokens\n"), {})
    assert config.sidecar.token_file == str(tmp_path / "drain-tokens")
    sidecar = make_sidecar(config, session)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for remote, headers in [
        ("127.0.0.1", None),
        ("127.0.0.1", {"Authorization": "Bearer wrong"}),
        ("127.0.0.1", {"Authorization": f"Basic {TOKEN}"}),
        (OTHER_HOST, None),
    ]:
        answer = await as_caller(sidecar, remote, "POST", "/drain", headers)
        assert answer.status == 401, (remote, headers)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert error_of(answer) == {
            "code": "unauthorized",
            "message": "a valid 'Authorization: Bearer <token>' header is required",
        }
    assert (await as_caller(sidecar, OTHER_HOST, "POST", "/drain", bearer)).status == 200
    async with serving(sidecar) as url:
        status, _, _ = await ask(session, "POST", f"{url}/drain")
        assert status == 401
        status, _, body = await ask(session, "POST", f"{url}/drain", bearer)
        assert status == 200 and body["drained"] is True
        # rotated: the new token works, the old one no more, with no restart
        (tmp_path / "drain-tokens").write_text("n3w-t0ken\n")
        status, _, _ = await ask(session, "POST", f"{url}/drain", bearer)
        assert status == 401
        new = {"Authorization": "Bearer n3w-t0ken"}
        status, _, _ = await ask(session, "POST", f"{url}/drain", new)
        assert status == 200


async def test_a_reload_that_adds_a_token_file_guards_at_once(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = load_config(service_file(tmp_path, fake), {})
    sidecar = make_sidecar(config, session)
    assert (await as_caller(sidecar, "127.0.0.1", "POST", "/drain")).status == 200
    (tmp_path / "t").write_text(f"{TOKEN}\n")
    sidecar.guard.update(str(tmp_path / "t"))
    assert (await as_caller(sidecar, "127.0.0.1", "POST", "/drain")).status == 401
    sidecar.guard.update(str(tmp_path / "gone"))  # unreadable: the tokens in force stay
    assert (await as_caller(sidecar, "127.0.0.1", "POST", "/drain")).status == 401
    sidecar.guard.update(None)
    assert (await as_caller(sidecar, "127.0.0.1", "POST", "/drain")).status == 200


async def test_an_unexpected_failure_is_a_json_500(
    fake: FakeMaster,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = make_sidecar(load_config(service_file(tmp_path, fake), {}), session)

    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server_module, "registration_json", broken)
    async with serving(sidecar) as url:
        status, _, body = await ask(session, "GET", f"{url}/status")
    assert status == 500
    assert body == {
        "error": {"code": "internal_error", "message": "the sidecar failed to answer; see its log"}
    }


# --- /status: the master, and an id held elsewhere ---------------------------------------------


def with_interval(config: Config, interval: float) -> Config:
    check = dataclasses.replace(config.check, interval=interval, timeout=interval / 2)
    return dataclasses.replace(config, check=check)


async def test_status_says_when_the_master_stops_checking(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Only the master's own checks count (its User-Agent), not a kubelet's probe; three
    check intervals without one and the master is no longer checking."""
    interval = 0.1
    config = with_interval(load_config(service_file(tmp_path, fake), {}), interval)
    sidecar = make_sidecar(config, session)
    async with serving(sidecar) as url:
        _, _, status = await ask(session, "GET", f"{url}/status")
        assert status["master"]["checking"] is None, "too early to say"
        await ask(session, "GET", f"{url}/health")  # a kubelet, say: not the master
        _, _, status = await ask(session, "GET", f"{url}/status")
        assert status["master"]["checking"] is None and status["master"]["last_check_at"] is None
        before = time.time()
        await ask(session, "GET", f"{url}/health", MASTER_AGENT)
        _, _, status = await ask(session, "GET", f"{url}/status")
        assert status["master"]["checking"] is True
        assert status["master"]["checking_since"] == status["master"]["last_check_at"]
        started = sidecar.master_checks.streak_since
        assert started is not None and started >= before
        for _ in range(3):  # checks keep coming: the streak goes on from its start
            await ask(session, "GET", f"{url}/health", MASTER_AGENT)
        assert sidecar.master_checks.streak_since == started
        await eventually(lambda: time.time() - (sidecar.master_checks.last_at or 0) > 0.35)
        _, _, status = await ask(session, "GET", f"{url}/status")
        assert status["master"]["checking"] is False
        last = sidecar.master_checks.last_at
        assert last is not None
        checking = sidecar.master_checks.view(time.time(), interval)
        assert checking == (False, last + 3 * interval)
        await ask(session, "GET", f"{url}/health", MASTER_AGENT)  # back: a new streak
        _, _, status = await ask(session, "GET", f"{url}/status")
        assert status["master"]["checking"] is True
        assert sidecar.master_checks.streak_since != started


async def test_status_says_the_master_is_unreachable_at_the_first_failed_sync(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sidecar = make_sidecar(load_config(service_file(tmp_path, fake), {}), session)
    async with serving(sidecar) as url:
        _, _, status = await ask(session, "GET", f"{url}/status")
        assert status["master"]["reachable"] is None, "not asked yet"
        assert await sidecar.sync.sync()
        _, _, status = await ask(session, "GET", f"{url}/status")
        assert status["master"] | {"since": None} == {
            "reachable": True,
            "since": None,
            "error": None,
            "checking": None,
            "checking_since": None,
            "last_check_at": None,
        }
        fake.fail(1, 503, {"error": {"code": "store_unavailable", "message": "cannot commit"}})
        assert not await sidecar.sync.sync()
        _, _, status = await ask(session, "GET", f"{url}/status")
        assert status["master"]["reachable"] is False
        assert status["master"]["error"] == f"{fake.url}: 503 cannot commit"
        assert status["master"]["since"] is not None
        assert await sidecar.sync.sync()
        _, _, status = await ask(session, "GET", f"{url}/status")
        assert status["master"]["reachable"] is True and status["master"]["error"] is None


async def test_status_shows_an_id_held_by_another_instance(
    fake: FakeMaster, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake.holders["web-1"] = "other-host:9501"
    sidecar = make_sidecar(load_config(service_file(tmp_path, fake), {}), session)
    async with serving(sidecar) as url:
        assert not await sidecar.sync.sync()
        _, _, status = await ask(session, "GET", f"{url}/status")
    conflict = status["conflict"]
    assert conflict | {"since": None} == {
        "holder": "other-host:9501",
        "message": "'web-1' is held by 'other-host:9501', which is not critical; refused "
        "(a takeover is allowed once the holder is critical)",
        "master_url": fake.url,
        "since": None,
        "attempts": 1,
    }
    assert status["registered"] is False
    assert status["master"]["reachable"] is True, "a refusal is an answer"
    assert status["instance"] == "this-host:9599"
    assert status["registration"]["instance"] == "this-host:9599"


# --- a drain no master answered, then SIGTERM ----------------------------------------------


def test_sigterm_deregisters_after_a_drain_no_master_answered(
    start_master: Callable[..., Master],
    start_sidecar: Callable[..., ProcessSidecar],
    node_service: NodeService,
) -> None:
    """A preStop POST /drain during a master's restart is 503 (not drained); the SIGTERM
    that follows must still deregister, as it does without the drain."""
    port = unused_port()
    master = start_master("--listen", f"127.0.0.1:{port}")  # SQLite: the restart keeps it
    sidecar = start_sidecar(node_service, master.url, name="web", ident="web-1")
    wait_until(lambda: status_of(master, "web-1") is not None, timeout=10, message="registered")
    master.kill()
    refused = http_request("POST", f"{sidecar.url}/drain", timeout=15)
    assert refused.status == 503 and refused.json()["drained"] is False
    start_master("--listen", f"127.0.0.1:{port}")
    assert status_of(master, "web-1") is not None, "the record outlives the restart"
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(10) == 0
    assert status_of(master, "web-1") is None, "SIGTERM left the service registered"


# --- a pass-through the master breaks midway -------------------------------------------------


async def test_a_pass_through_the_master_breaks_midway_is_cut_not_left_hanging(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """An answer over ANSWER_MAX is relayed as it comes; a master that breaks it midway
    (killed, or its connection lost) leaves the caller a cut answer at once: neither one
    that hangs until the caller gives up, nor a second answer after the first one's start."""

    async def breaks(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        answer = web.StreamResponse(headers={"X-Picoapi-Index": "5"})
        await answer.prepare(request)
        await answer.write(b"x" * (ANSWER_MAX + 100_000))
        await asyncio.sleep(0.05)
        transport.abort()
        return answer

    app = web.Application()
    app.router.add_get("/v1/services", breaks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    broken = FakeMaster()
    broken.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    sidecar = make_sidecar(load_config(service_file(tmp_path, broken), {}), session)
    try:
        async with serving(sidecar) as url:
            began = time.monotonic()
            with pytest.raises(aiohttp.ClientPayloadError):
                async with session.get(
                    f"{url}/v1/services", timeout=aiohttp.ClientTimeout(total=5)
                ) as answer:
                    assert answer.status == 200 and answer.headers["X-Picoapi-Cache"] == "pass"
                    await answer.read()
            assert time.monotonic() - began < 3
            figures = sidecar.discovery.figures()
            assert figures["waiting"] == figures["passing_through"] == 0
    finally:
        await sidecar.discovery.close()
        await runner.cleanup()
