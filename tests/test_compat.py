"""The picoapi 1.0.4 routes, in-process on a memory store: what its services send, unchanged."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from master.api import REGISTRY
from master.app import SCHEDULER, build_app
from master.auth import Auth
from master.compat import slug
from master.model import CheckResult, Status
from master.shared.tokens import TokenFile
from master.store.memory import MemoryStore

DOCUMENT = {"openapi": "3.0.2", "info": {"title": "Example Service", "version": "0.0.1"}}


def picoapi_body(**changes: Any) -> dict[str, Any]:
    """What picoapi's register_uservice() PUTs: every value from the environment, as text."""
    body: dict[str, Any] = {
        "name": "Example Service",
        "tags": [""],  # API_TAGS unset
        "host": "127.0.0.1",
        "port": "8888",
        "healthcheck": {"url": "http://127.0.0.1:8888/health", "interval": "300"},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


async def start(auth: Auth | None = None, *, checks: bool = True) -> TestClient[Any, Any]:
    app = build_app(MemoryStore(), auth or Auth(None, None))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    if not checks:  # statuses are set by the test, so no probe may race it
        await app[SCHEDULER].stop()
    return client


@pytest.fixture
async def master() -> AsyncIterator[TestClient[Any, Any]]:
    client = await start()
    yield client
    await client.close()


@pytest.fixture
async def quiet_master() -> AsyncIterator[TestClient[Any, Any]]:
    client = await start(checks=False)
    yield client
    await client.close()


async def services(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    answer = await client.get("/v1/services")
    return (await answer.json())["services"]  # type: ignore[no-any-return]


async def status(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    return await (await client.get("/services/status")).json()  # type: ignore[no-any-return]


# --- registering -----------------------------------------------------------------------


async def test_picoapi_put_registers_as_its_services_send_it(
    master: TestClient[Any, Any],
) -> None:
    answer = await master.put("/register", json=picoapi_body())
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert await answer.text() == "null"  # picoapi's handler returned None
    [record] = await services(master)
    assert record["name"] == "example-service"
    assert record["id"] == "example-service-127.0.0.1-8888"  # name, host and port
    assert record["address"] == "127.0.0.1"
    assert record["port"] == 8888
    assert record["tags"] == []
    assert record["meta"] == {"picoapi_name": "Example Service"}
    assert record["check"]["url"] == "http://127.0.0.1:8888/health"
    assert record["check"]["interval"] == "5m"
    assert record["check"]["timeout"] == "3s"
    # Not checked yet, or the probe of a closed port failed: unhealthy either way.
    assert await status(master) == [{"name": "Example Service", "status": "unhealthy"}]


async def test_get_with_a_body_registers_as_picoapi_master_routed_it(
    master: TestClient[Any, Any],
) -> None:
    answer = await master.request("GET", "/register", json=picoapi_body(tags=["a", "b"]))
    assert answer.status == 200 and await answer.json() is None
    [record] = await services(master)
    assert record["tags"] == ["a", "b"]


async def test_head_does_not_register(master: TestClient[Any, Any]) -> None:
    answer = await master.head("/register")
    assert answer.status == 405
    assert await services(master) == []


@pytest.mark.parametrize(
    ("port", "interval", "expected_interval"),
    [
        ("8888", "300", "5m"),
        (8888, 300, "5m"),
        (" 8888 ", "2.5", "2500ms"),
        ("8888", 45.0, "45s"),
        ("8888", "10s", "10s"),  # a duration with its unit also works
        ("8888", None, "30s"),  # API_HEALTH_INTERVAL unset: picoapi's default
        ("8888", ..., "30s"),
    ],
)
async def test_port_and_interval_may_be_numbers_or_strings(
    master: TestClient[Any, Any], port: Any, interval: Any, expected_interval: str
) -> None:
    check = {"url": "http://127.0.0.1:8888/health", "interval": interval}
    body = picoapi_body(port=port, healthcheck={k: v for k, v in check.items() if v is not ...})
    answer = await master.put("/register", json=body)
    assert answer.status == 200, await answer.text()
    [record] = await services(master)
    assert record["port"] == 8888
    assert record["check"]["interval"] == expected_interval


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ([""], []),
        (["web", "", "eu"], ["web", "eu"]),  # API_TAGS="web::eu"
        (["web", "web"], ["web"]),
        (None, []),
        (..., []),
    ],
)
async def test_empty_tags_are_dropped(
    master: TestClient[Any, Any], tags: Any, expected: list[str]
) -> None:
    assert (await master.put("/register", json=picoapi_body(tags=tags))).status == 200
    [record] = await services(master)
    assert record["tags"] == expected


@pytest.mark.parametrize("absent", [None, ...])
async def test_metadata_and_healthcheck_may_be_missing_or_null(
    master: TestClient[Any, Any], absent: Any
) -> None:
    body = picoapi_body(metadata=absent, healthcheck=absent)
    assert (await master.put("/register", json=body)).status == 200
    [record] = await services(master)
    assert record["check"] is None
    assert record["status"] == "passing"
    assert record["meta"] == {"picoapi_name": "Example Service"}
    assert await status(master) == [{"name": "Example Service", "status": "No healthcheck!"}]


async def test_metadata_values_are_kept_as_text(master: TestClient[Any, Any]) -> None:
    metadata = {"team": "data", "replicas": 3, "debug": True, "limits": {"cpu": 1}, "x": None}
    assert (await master.put("/register", json=picoapi_body(metadata=metadata))).status == 200
    [record] = await services(master)
    assert record["meta"] == {
        "team": "data",
        "replicas": "3",
        "debug": "true",
        "limits": '{"cpu":1}',
        "x": "null",
        "picoapi_name": "Example Service",
    }


async def test_a_restarted_service_replaces_its_entry(master: TestClient[Any, Any]) -> None:
    assert (await master.put("/register", json=picoapi_body(port="8888"))).status == 200
    [first] = await services(master)
    changed = picoapi_body(port="8888", tags=["restarted"])
    assert (await master.put("/register", json=changed)).status == 200
    [second] = await services(master)
    assert second["id"] == first["id"]
    assert second["tags"] == ["restarted"]
    assert second["registered_at"] == first["registered_at"]
    assert len(await status(master)) == 1


async def test_replicas_of_one_service_sit_side_by_side(master: TestClient[Any, Any]) -> None:
    """picoapi's own id was the name: a second replica replaced the first."""
    for host, port in (("10.0.0.1", "8888"), ("10.0.0.2", "8888"), ("10.0.0.1", "9999")):
        answer = await master.put("/register", json=picoapi_body(host=host, port=port))
        assert answer.status == 200
    listed = await services(master)
    assert sorted(r["id"] for r in listed) == [
        "example-service-10.0.0.1-8888",
        "example-service-10.0.0.1-9999",
        "example-service-10.0.0.2-8888",
    ]
    assert {r["name"] for r in listed} == {"example-service"}
    assert all(r["check"]["deregister_after"] == "10m" for r in listed)  # the dead go away


async def test_the_same_registration_again_changes_nothing(
    master: TestClient[Any, Any],
) -> None:
    first = await master.put("/register", json=picoapi_body())
    again = await master.put("/register", json=picoapi_body())
    assert again.headers["X-Picoapi-Index"] == first.headers["X-Picoapi-Index"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test", "test"),
        ("Example Service", "example-service"),
        ("Café Menu API", "cafe-menu-api"),
        ("  --Billing__v2.API!!  ", "billing__v2.api"),
        ("a" * 100, "a" * 63),
        # Nothing ASCII to keep: a stable name from the original's hash.
        ("日本語", "picoapi-" + hashlib.sha256("日本語".encode()).hexdigest()[:12]),
    ],
)
def test_names_map_to_a_slug(name: str, expected: str) -> None:
    assert slug(name) == expected


async def test_a_slug_held_by_another_service_is_refused(master: TestClient[Any, Any]) -> None:
    assert (await master.put("/register", json=picoapi_body())).status == 200
    clash = await master.put("/register", json=picoapi_body(name="example service"))
    assert clash.status == 400
    error = (await clash.json())["error"]
    assert error["field"] == "name" and error["code"] == "name_taken"
    v1 = {"name": "billing", "address": "127.0.0.1", "port": 8888}
    answer = await master.put("/v1/services/billing-127.0.0.1-8888", json=v1)
    assert answer.status == 200
    taken = await master.put("/register", json=picoapi_body(name="Billing"))
    assert taken.status == 400 and (await taken.json())["error"]["field"] == "name"
    assert len(await services(master)) == 2


# --- refused input ---------------------------------------------------------------------

GOOD_CHECK = {"url": "http://127.0.0.1:8888/health", "interval": "30"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (picoapi_body(name=...), "name"),
        (picoapi_body(name=None), "name"),  # API_TITLE unset
        (picoapi_body(name=""), "name"),
        (picoapi_body(name=5), "name"),
        (picoapi_body(host=...), "host"),
        (picoapi_body(host=None), "host"),
        (picoapi_body(port=...), "port"),
        (picoapi_body(port=None), "port"),  # API_PORT unset
        (picoapi_body(port="http"), "port"),
        (picoapi_body(port="70000"), "port"),
        (picoapi_body(port=True), "port"),
        (picoapi_body(tags="a:b"), "tags"),
        (picoapi_body(tags=["ok", 3]), "tags[1]"),
        (picoapi_body(tags=["", "x\n"]), "tags[1]"),
        (picoapi_body(metadata=[1]), "metadata"),
        (picoapi_body(metadata={"k": "v" * 600}), "metadata.k"),
        (picoapi_body(healthcheck="http://x/health"), "healthcheck"),
        (picoapi_body(healthcheck={}), "healthcheck.url"),
        (picoapi_body(healthcheck={"url": None}), "healthcheck.url"),
        (picoapi_body(healthcheck={"url": "ftp://x/health"}), "healthcheck.url"),
        (picoapi_body(healthcheck={**GOOD_CHECK, "interval": "soon"}), "healthcheck.interval"),
        (picoapi_body(healthcheck={**GOOD_CHECK, "interval": "0"}), "healthcheck.interval"),
        (picoapi_body(healthcheck={**GOOD_CHECK, "interval": 7200}), "healthcheck.interval"),
        (picoapi_body(healthcheck={**GOOD_CHECK, "interval": -5}), "healthcheck.interval"),
        (picoapi_body(healthcheck={**GOOD_CHECK, "interval": True}), "healthcheck.interval"),
    ],
)
@pytest.mark.parametrize("method", ["PUT", "GET"])
async def test_bad_bodies_are_400_naming_the_field(
    master: TestClient[Any, Any], method: str, body: dict[str, Any], field: str
) -> None:
    answer = await master.request(method, "/register", json=body)
    assert answer.status == 400, await answer.text()
    assert (await answer.json())["error"]["field"] == field
    assert await services(master) == []


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"[1, 2]", "invalid_field"),
        (b"NaN", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
async def test_bodies_that_are_not_an_object_are_400(
    master: TestClient[Any, Any], raw: bytes, code: str
) -> None:
    headers = {"Content-Type": "application/json"}
    answer = await master.put("/register", data=raw, headers=headers)
    assert answer.status == 400
    assert (await answer.json())["error"]["code"] == code


async def test_a_body_over_one_mebibyte_is_413(master: TestClient[Any, Any]) -> None:
    body = picoapi_body(padding="x" * (1 << 20))  # unknown keys are ignored, not their size
    answer = await master.put("/register", json=body)
    assert answer.status == 413


async def test_registering_by_get_needs_the_write_token(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("s3cret\n")
    client = await start(Auth(TokenFile(token_file), None))
    try:
        for method in ("GET", "PUT"):
            refused = await client.request(method, "/register", json=picoapi_body())
            assert refused.status == 401, method
        assert await services(client) == []  # reads stay open
        bearer = {"Authorization": "Bearer s3cret"}
        answer = await client.request("GET", "/register", json=picoapi_body(), headers=bearer)
        assert answer.status == 200
    finally:
        await client.close()


# --- /services/status and /services/definition -----------------------------------------


@pytest.mark.parametrize(
    ("our_status", "picoapi_status"),
    [
        (Status.PASSING, "healthy"),
        (Status.WARNING, "unhealthy"),
        (Status.CRITICAL, "unhealthy"),
        (Status.UNKNOWN, "unhealthy"),
    ],
)
async def test_status_maps_passing_to_healthy_and_the_rest_to_unhealthy(
    quiet_master: TestClient[Any, Any], our_status: Status, picoapi_status: str
) -> None:
    assert (await quiet_master.put("/register", json=picoapi_body())).status == 200
    registry = quiet_master.server.app[REGISTRY]
    url = picoapi_body()["healthcheck"]["url"]
    result = CheckResult(status=our_status, output="", duration_ms=1.0)
    await registry.record_check("example-service-127.0.0.1-8888", url, our_status, result)
    assert await status(quiet_master) == [{"name": "Example Service", "status": picoapi_status}]


async def test_status_follows_real_health_checks(master: TestClient[Any, Any]) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "I am running!"})

    target = web.Application()
    target.router.add_get("/health", health)
    async with TestServer(target, host="127.0.0.1") as server:
        check = {"url": f"http://127.0.0.1:{server.port}/health", "interval": "1"}
        body = picoapi_body(port=str(server.port), healthcheck=check)
        assert (await master.put("/register", json=body)).status == 200
        deadline = time.monotonic() + 10
        while await status(master) != [{"name": "Example Service", "status": "healthy"}]:
            assert time.monotonic() < deadline, await status(master)
            await asyncio.sleep(0.05)


async def test_status_lists_every_service_under_the_name_it_gave(
    master: TestClient[Any, Any],
) -> None:
    v1 = {"name": "billing", "address": "10.0.0.1", "port": 80}
    assert (await master.put("/v1/services/billing-1", json=v1)).status == 200
    assert (await master.put("/register", json=picoapi_body(healthcheck=None))).status == 200
    assert await status(master) == [
        {"name": "billing", "status": "No healthcheck!"},
        {"name": "Example Service", "status": "No healthcheck!"},
    ]


async def test_definition_answers_each_service_document_by_name(
    master: TestClient[Any, Any],
) -> None:
    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(DOCUMENT)

    async def broken(request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    target = web.Application()
    target.router.add_get("/openapi.json", openapi)
    other = web.Application()
    other.router.add_get("/openapi.json", broken)
    async with (
        TestServer(target, host="127.0.0.1") as up,
        TestServer(other, host="127.0.0.1") as wrong,
    ):
        # A picoapi service never sends its document: it is fetched, as picoapi's master did.
        for name, port in (("Example Service", up.port), ("Broken", wrong.port), ("Gone", 1)):
            body = picoapi_body(name=name, port=port, healthcheck=None)
            assert (await master.put("/register", json=body)).status == 200
        # A sidecar's service sent its document: that one is served.
        stored = {"openapi": "3.1.0", "info": {"title": "billing", "version": "2"}, "paths": {}}
        v1 = {"name": "billing", "address": "127.0.0.1", "port": 1, "openapi": stored}
        assert (await master.put("/v1/services/billing-1", json=v1)).status == 200
        v1_bare = {"name": "ledger", "address": "127.0.0.1", "port": up.port}
        assert (await master.put("/v1/services/ledger-1", json=v1_bare)).status == 200
        answer = await master.get("/services/definition")
    assert answer.status == 200
    assert await answer.json() == [
        {"billing": stored},
        {"Broken": {"status": "not running!"}},
        {"Example Service": DOCUMENT},
        {"Gone": {"status": "not running!"}},
        {"ledger": {"status": "not running!"}},  # not a picoapi service: nothing fetched
    ]


def test_the_real_master_process_takes_picoapi_registrations(start_master: Any) -> None:
    """As a picoapi service does it: `requests.put(API_REGISTER_PATH, json=...)`."""
    master = start_master(store="memory://")
    answer = master.request("PUT", "/register", picoapi_body(healthcheck=None))
    assert answer.status == 200 and answer.json() is None
    assert master.request("GET", "/services/status").json() == [
        {"name": "Example Service", "status": "No healthcheck!"}
    ]
    [record] = master.request("GET", "/v1/services").json()["services"]
    assert record["id"] == "example-service-127.0.0.1-8888"


async def test_definition_fetches_only_what_the_check_policy_allows() -> None:
    """The master fetches a picoapi service's document itself: from an address the check
    policy refuses (outside --check-allow, link-local, metadata), it must not, whether the
    host is an address or a name that resolves to one."""
    from master.policy import CheckPolicy, parse_networks

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(DOCUMENT)

    target = web.Application()
    target.router.add_get("/openapi.json", openapi)
    policy = CheckPolicy(allow=parse_networks("10.0.0.0/8"))
    app = build_app(MemoryStore(), Auth(None, None), policy=policy)
    async with TestClient(TestServer(app)) as master, TestServer(target, host="127.0.0.1") as up:
        await app[SCHEDULER].stop()
        for name, host in (("By Address", "127.0.0.1"), ("By Name", "localhost")):
            body = picoapi_body(name=name, host=host, port=up.port, healthcheck=None)
            assert (await master.put("/register", json=body)).status == 200
        answer = await master.get("/services/definition")
        assert answer.status == 200
        assert await answer.json() == [
            {"By Address": {"status": "not running!"}},
            {"By Name": {"status": "not running!"}},
        ]
