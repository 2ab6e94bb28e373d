"""The Consul-compatible view and the Prometheus targets, in-process on a memory store."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from master.api import REGISTRY
from master.app import SCHEDULER, build_app
from master.auth import Auth
from master.model import CheckResult, Status
from master.store.memory import MemoryStore

CHECK_URL = "http://127.0.0.1:1/health"
CATALOG_FIELDS = {
    "ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta", "ServiceID",
    "ServiceName", "ServiceAddress", "ServicePort", "ServiceTags", "ServiceMeta",
    "ServiceWeights", "ServiceEnableTagOverride", "CreateIndex", "ModifyIndex",
}  # fmt: skip
CHECK_FIELDS = {
    "Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName",
    "ServiceTags", "Type", "Interval", "Timeout", "CreateIndex", "ModifyIndex",
}  # fmt: skip
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@pytest.fixture
async def master() -> AsyncIterator[TestClient[Any, Any]]:
    """The master with its health checks stopped: each test sets the statuses it needs."""
    app = build_app(MemoryStore(), Auth(None, None))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    await app[SCHEDULER].stop()
    yield client
    await client.close()


async def register(
    client: TestClient[Any, Any],
    ident: str,
    name: str = "web",
    *,
    status: Status | None = None,
    **fields: Any,
) -> None:
    body = {"name": name, "address": "10.0.0.5", "port": 8080, **fields}
    if status is not None:
        body["check"] = {"url": CHECK_URL, "interval": "10s"}
    answer = await client.put(f"/v1/services/{ident}", json=body)
    assert answer.status == 200, await answer.text()
    if status is not None and status is not Status.UNKNOWN:
        result = CheckResult(status=status, output=f"HTTP says {status}", duration_ms=1.0)
        await client.server.app[REGISTRY].record_check(ident, CHECK_URL, status, result)


async def get(client: TestClient[Any, Any], path: str) -> tuple[Any, dict[str, str]]:
    answer = await client.get(path)
    assert answer.status == 200, await answer.text()
    return await answer.json(), dict(answer.headers)


# --- headers and blocking --------------------------------------------------------------


async def test_every_answer_carries_the_consul_headers(master: TestClient[Any, Any]) -> None:
    await register(master, "web-1")
    index = master.server.app[REGISTRY].index
    for path in (
        "/v1/catalog/services",
        "/v1/catalog/service/web",
        "/v1/health/service/web",
        "/v1/agent/self",
    ):
        _, headers = await get(master, path)
        assert headers["X-Consul-Index"] == headers["X-Picoapi-Index"] == str(index), path
        # The Go client (Prometheus, Traefik) fails on an answer without LastContact.
        assert headers["X-Consul-LastContact"] == "0", path
        assert headers["X-Consul-KnownLeader"] == "true", path


async def test_a_blocking_query_answers_when_the_registry_changes(
    master: TestClient[Any, Any],
) -> None:
    await register(master, "web-1")
    _, headers = await get(master, "/v1/catalog/services")
    index = int(headers["X-Consul-Index"])
    started = time.monotonic()
    waiting = asyncio.ensure_future(get(master, f"/v1/health/service/db?index={index}&wait=10s"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await register(master, "db-1", "db")
    body, headers = await waiting
    assert time.monotonic() - started < 5
    assert int(headers["X-Consul-Index"]) > index
    assert [entry["Service"]["ID"] for entry in body] == ["db-1"]


async def test_a_blocking_query_ends_after_wait(master: TestClient[Any, Any]) -> None:
    _, headers = await get(master, "/v1/catalog/services")
    index = headers["X-Consul-Index"]
    started = time.monotonic()
    # The Go client sends the wait in milliseconds.
    _, headers = await get(master, f"/v1/catalog/service/web?index={index}&wait=200ms")
    assert 0.15 < time.monotonic() - started < 5
    assert headers["X-Consul-Index"] == index


@pytest.mark.parametrize(("query", "field"), [("index=x", "index"), ("index=1&wait=soon", "wait")])
async def test_bad_blocking_parameters_are_400(
    master: TestClient[Any, Any], query: str, field: str
) -> None:
    answer = await master.get(f"/v1/catalog/services?{query}")
    assert answer.status == 400
    assert (await answer.json())["error"]["field"] == field


# --- /v1/catalog -----------------------------------------------------------------------


async def test_catalog_services_lists_names_with_their_tags(
    master: TestClient[Any, Any],
) -> None:
    assert (await get(master, "/v1/catalog/services"))[0] == {}
    await register(master, "web-1", tags=["a", "b"])
    await register(master, "web-2", tags=["b", "c"])
    await register(master, "db-1", "db")
    body, _ = await get(master, "/v1/catalog/services")
    assert body == {"db": [], "web": ["a", "b", "c"]}


async def test_catalog_service_answers_consul_catalog_service_objects(
    master: TestClient[Any, Any],
) -> None:
    await register(master, "web-1", tags=["v1"], meta={"team": "data"})
    body, headers = await get(master, "/v1/catalog/service/web")
    [entry] = body
    assert set(entry) == CATALOG_FIELDS
    index = int(headers["X-Consul-Index"])
    assert entry == {
        "ID": str(uuid.UUID(entry["ID"])),
        "Node": "10.0.0.5",
        "Address": "10.0.0.5",
        "Datacenter": "dc1",
        "TaggedAddresses": {},
        "NodeMeta": {},
        "ServiceID": "web-1",
        "ServiceName": "web",
        "ServiceAddress": "10.0.0.5",
        "ServicePort": 8080,
        "ServiceTags": ["v1"],
        "ServiceMeta": {"team": "data"},
        "ServiceWeights": {"Passing": 1, "Warning": 1},
        "ServiceEnableTagOverride": False,
        "CreateIndex": index,
        "ModifyIndex": index,
    }


async def test_catalog_service_filters_by_tag(master: TestClient[Any, Any]) -> None:
    await register(master, "web-1", tags=["v1", "eu"])
    await register(master, "web-2", tags=["v2", "eu"])
    await register(master, "db-1", "db", tags=["v1"])

    async def ids(query: str) -> list[str]:
        body, _ = await get(master, f"/v1/catalog/service/web{query}")
        return [entry["ServiceID"] for entry in body]

    assert await ids("") == ["web-1", "web-2"]
    assert await ids("?tag=v1") == ["web-1"]
    assert await ids("?tag=eu&tag=v2") == ["web-2"]  # every tag must match
    assert await ids("?tag=nope") == []
    body, _ = await get(master, "/v1/catalog/service/unknown")
    assert body == []  # Consul answers an unknown service with an empty list, not a 404


# --- /v1/health ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "consul_status"),
    [
        (Status.PASSING, "passing"),
        (Status.WARNING, "warning"),
        (Status.CRITICAL, "critical"),
        (Status.UNKNOWN, "critical"),  # Consul starts a check critical, too
    ],
)
async def test_health_service_answers_node_service_and_checks(
    master: TestClient[Any, Any], status: Status, consul_status: str
) -> None:
    await register(master, "web-1", tags=["v1"], meta={"team": "data"}, status=status)
    [entry], _ = await get(master, "/v1/health/service/web")
    assert set(entry) == {"Node", "Service", "Checks"}
    node = entry["Node"]
    assert {k: node[k] for k in ("Node", "Address", "Datacenter")} == {
        "Node": "10.0.0.5",
        "Address": "10.0.0.5",
        "Datacenter": "dc1",
    }
    service = entry["Service"]
    assert {k: service[k] for k in ("ID", "Service", "Tags", "Address", "Port", "Meta")} == {
        "ID": "web-1",
        "Service": "web",
        "Tags": ["v1"],
        "Address": "10.0.0.5",
        "Port": 8080,
        "Meta": {"team": "data"},
    }
    [check] = entry["Checks"]
    assert set(check) == CHECK_FIELDS
    assert check["Node"] == "10.0.0.5"
    assert check["CheckID"] == "service:web-1"
    assert check["Status"] == consul_status
    assert check["ServiceID"] == "web-1" and check["ServiceName"] == "web"
    assert check["ServiceTags"] == ["v1"]
    if status is Status.UNKNOWN:
        assert check["Output"] == "not checked yet"
    else:
        assert check["Output"] == f"HTTP says {status}"


async def test_health_service_passing_and_tag_filters(master: TestClient[Any, Any]) -> None:
    await register(master, "web-1", tags=["eu"], status=Status.PASSING)
    await register(master, "web-2", tags=["eu"], status=Status.WARNING)
    await register(master, "web-3", tags=["us"], status=Status.CRITICAL)
    await register(master, "web-4", tags=["us"])  # no check: passing, with no Checks

    async def ids(query: str) -> list[str]:
        body, _ = await get(master, f"/v1/health/service/web{query}")
        return [entry["Service"]["ID"] for entry in body]

    assert await ids("") == ["web-1", "web-2", "web-3", "web-4"]
    assert await ids("?passing") == ["web-1", "web-4"]
    assert await ids("?passing=true") == ["web-1", "web-4"]
    assert await ids("?passing=false") == ["web-1", "web-2", "web-3", "web-4"]
    assert await ids("?tag=us") == ["web-3", "web-4"]
    assert await ids("?tag=us&passing=1") == ["web-4"]
    body, _ = await get(master, "/v1/health/service/web?tag=us&passing")
    assert body[0]["Checks"] == []
    bad = await master.get("/v1/health/service/web?passing=perhaps")
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "passing"


async def test_agent_self_names_the_datacenter(master: TestClient[Any, Any]) -> None:
    body, _ = await get(master, "/v1/agent/self")
    assert body["Config"]["Datacenter"] == "dc1"
    assert isinstance(body["Config"]["NodeName"], str)


# --- /v1/prometheus/targets ------------------------------------------------------------


async def test_prometheus_targets_are_http_sd_target_groups(
    master: TestClient[Any, Any],
) -> None:
    await register(
        master,
        "web-1",
        tags=["web", "eu"],
        meta={"team": "data", "build.version": "1.4", "owner-email": "a@b"},
        status=Status.PASSING,
    )
    await register(master, "db-1", "db", address="::1", port=5432)
    body, _ = await get(master, "/v1/prometheus/targets")
    assert body == [
        {
            "targets": ["[::1]:5432"],
            "labels": {
                "__scheme__": "http",
                "__meta_picoapi_service": "db",
                "__meta_picoapi_id": "db-1",
                "__meta_picoapi_status": "passing",
                "__meta_picoapi_tags": ",,",
                "__meta_picoapi_address": "::1",
                "__meta_picoapi_port": "5432",
                "__meta_picoapi_scheme": "http",
            },
        },
        {
            "targets": ["10.0.0.5:8080"],
            "labels": {
                "__scheme__": "http",
                "__meta_picoapi_service": "web",
                "__meta_picoapi_id": "web-1",
                "__meta_picoapi_status": "passing",
                "__meta_picoapi_tags": ",web,eu,",
                "__meta_picoapi_address": "10.0.0.5",
                "__meta_picoapi_port": "8080",
                "__meta_picoapi_scheme": "http",
                "__meta_picoapi_meta_build_version": "1.4",
                "__meta_picoapi_meta_owner_email": "a@b",
                "__meta_picoapi_meta_team": "data",
            },
        },
    ]
    for group in body:
        assert all(LABEL_NAME_RE.fullmatch(label) for label in group["labels"])
        assert all(isinstance(value, str) for value in group["labels"].values())


async def test_prometheus_targets_scrape_https_services_where_their_meta_says(
    master: TestClient[Any, Any],
) -> None:
    await register(
        master,
        "api-1",
        "api",
        scheme="https",
        meta={"metrics_port": "9102", "metrics_path": "/internal/metrics"},
    )
    [group], _ = await get(master, "/v1/prometheus/targets")
    assert group["targets"] == ["10.0.0.5:9102"]  # the metrics port, not the service's
    labels = group["labels"]
    assert labels["__scheme__"] == "https"
    assert labels["__metrics_path__"] == "/internal/metrics"
    assert labels["__meta_picoapi_port"] == "8080"  # the service's own port stays a label


async def test_prometheus_targets_filter_by_tag_name_and_status(
    master: TestClient[Any, Any],
) -> None:
    await register(master, "web-1", tags=["eu", "metrics"], status=Status.PASSING)
    await register(master, "web-2", tags=["eu"], status=Status.CRITICAL)
    await register(master, "db-1", "db", tags=["metrics"], status=Status.UNKNOWN)

    async def ids(query: str) -> list[str]:
        body, _ = await get(master, f"/v1/prometheus/targets{query}")
        return [group["labels"]["__meta_picoapi_id"] for group in body]

    assert await ids("") == ["db-1", "web-1", "web-2"]
    assert await ids("?tag=metrics") == ["db-1", "web-1"]
    assert await ids("?tag=metrics&tag=eu") == ["web-1"]
    assert await ids("?status=critical") == ["web-2"]
    assert await ids("?status=unknown") == ["db-1"]
    assert await ids("?name=web&status=passing") == ["web-1"]
    bad = await master.get("/v1/prometheus/targets?status=sick")
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "status"


# --- filter=, dc=, per-entry indexes, what is not served ---------------------------------


@pytest.mark.parametrize(
    ("path", "expression", "expected"),
    [
        ("/v1/catalog/service/web", 'ServiceTags contains "eu"', ["web-1"]),
        ("/v1/catalog/service/web", '"us" in ServiceTags', ["web-2"]),
        ("/v1/catalog/service/web", "ServiceMeta.version == 2", ["web-2"]),
        ("/v1/catalog/service/web", 'ServiceMeta.version != "2"', ["web-1"]),
        (
            "/v1/catalog/service/web",
            "ServicePort == 8081 or ServiceID == web-1",
            ["web-1", "web-2"],
        ),
        ("/v1/catalog/service/web", 'ServiceID matches "-2$"', ["web-2"]),
        ("/v1/catalog/service/web", "ServiceMeta.team is empty", ["web-2"]),
        ("/v1/catalog/service/web", "not (ServiceMeta.team is empty)", ["web-1"]),
        ("/v1/catalog/service/web", '"eu" not in ServiceTags and ServicePort > 1', None),
        ("/v1/health/service/web", "Checks.Status == passing", ["web-1"]),
        ("/v1/health/service/web", "Checks.Status != passing", ["web-2"]),
        ("/v1/health/service/web", "Service.Tags contains eu and Service.Port == 8080", ["web-1"]),
        ("/v1/health/service/web", "Checks.Status ==", None),
        ("/v1/health/service/web", "(Checks.Status == passing", None),
    ],
)
async def test_filter_is_evaluated_or_refused_never_ignored(
    master: TestClient[Any, Any], path: str, expression: str, expected: list[str] | None
) -> None:
    await register(master, "web-1", tags=["eu"], meta={"team": "data", "version": "1"},
                   status=Status.PASSING)  # fmt: skip
    await register(master, "web-2", tags=["us"], meta={"version": "2"}, port=8081,
                   status=Status.CRITICAL)  # fmt: skip
    answer = await master.get(path, params={"filter": expression})
    if expected is None:
        assert answer.status == 400, await answer.text()
        error = (await answer.json())["error"]
        assert (error["code"], error["field"]) == ("invalid_filter", "filter")
        return
    assert answer.status == 200, await answer.text()
    body = await answer.json()
    ids = sorted(e["ServiceID"] if "ServiceID" in e else e["Service"]["ID"] for e in body)
    assert ids == expected


async def test_an_unknown_selector_says_which_it_is(master: TestClient[Any, Any]) -> None:
    answer = await master.get("/v1/catalog/service/web", params={"filter": "Service.Foo == x"})
    assert answer.status == 400
    message = (await answer.json())["error"]["message"]
    assert "Service.Foo" in message and "ServiceTags" in message
    services = await master.get("/v1/catalog/services", params={"filter": "ServiceName == web"})
    assert services.status == 200


async def test_another_datacenter_is_an_error_naming_ours(master: TestClient[Any, Any]) -> None:
    for path in ("/v1/catalog/services", "/v1/catalog/service/web", "/v1/health/service/web"):
        answer = await master.get(path, params={"dc": "eu-west"})
        assert answer.status == 400
        assert "dc1" in (await answer.json())["error"]["message"]
        assert (await master.get(path, params={"dc": "dc1"})).status == 200


async def test_entries_have_their_own_indexes_and_a_name_wakes_only_for_itself(
    master: TestClient[Any, Any],
) -> None:
    await register(master, "web-1")
    await register(master, "db-1", "db")
    body, headers = await get(master, "/v1/catalog/service/web")
    web_index = int(headers["X-Consul-Index"])
    assert body[0]["CreateIndex"] == body[0]["ModifyIndex"] == web_index
    db, _ = await get(master, "/v1/catalog/service/db")
    assert db[0]["ModifyIndex"] > web_index  # registered later: its own index
    waiting = asyncio.ensure_future(
        get(master, f"/v1/health/service/web?index={web_index}&wait=2s")
    )
    await asyncio.sleep(0.2)
    await register(master, "db-2", "db")  # another service's change: web's watcher sleeps on
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await register(master, "web-1", tags=["changed"])
    body, headers = await asyncio.wait_for(waiting, 1.0)
    assert int(headers["X-Consul-Index"]) > web_index
    assert body[0]["Service"]["Tags"] == ["changed"]
    assert body[0]["Service"]["CreateIndex"] == web_index < body[0]["Service"]["ModifyIndex"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/agent/service/register"),
        ("GET", "/v1/kv/config/app"),
        ("PUT", "/v1/kv/config/app"),
        ("PUT", "/v1/session/create"),
        ("GET", "/v1/acl/tokens"),
        ("PUT", "/v1/catalog/register"),
        ("PUT", "/v1/txn"),
    ],
)
async def test_what_is_not_served_says_so(
    master: TestClient[Any, Any], method: str, path: str
) -> None:
    answer = await master.request(method, path)
    assert answer.status == 501
    error = (await answer.json())["error"]
    assert error["code"] == "not_supported"
    assert error["message"].startswith("read-only catalog: not supported")


# --- filter strings, depth and `matches` -------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "holds"),
    [
        ('ServiceMeta.owner == "José"', True),  # UTF-8 text as it is, not mangled
        (r'ServiceMeta.owner == "Jos\u00e9"', True),
        (r'ServiceMeta.owner == "Jos\xe9"', False),  # Go: \x is a byte; é is two bytes
        (r'ServiceMeta.quote == "say \"hi\"\t"', True),
        ("ServiceMeta.owner == `José`", True),
    ],
)
def test_filter_strings_are_read_as_go_reads_them(expression: str, holds: bool) -> None:
    from master.consul_filter import CATALOG_SERVICE_FIELDS, compile_filter

    entry = {"ServiceMeta": {"owner": "José", "quote": 'say "hi"\t'}}
    assert compile_filter(expression, CATALOG_SERVICE_FIELDS)(entry) is holds


@pytest.mark.parametrize(
    "expression",
    [
        r'ServiceName == "a\x"',  # a bad escape
        r'ServiceName == "\N{DIGIT ONE}"',  # Python's, not Go's
        r'ServiceName == "\q"',
        'ServiceName matches "(a)\\1"',  # a back reference: not RE2
        'ServiceName matches "a(?=b)"',  # a look-ahead: not RE2
    ],
)
async def test_a_filter_we_cannot_read_is_a_400_not_a_500(
    master: TestClient[Any, Any], expression: str
) -> None:
    await register(master, "web-1")
    answer = await master.get("/v1/catalog/service/web", params={"filter": expression})
    assert answer.status == 400, await answer.text()
    assert (await answer.json())["error"]["code"] == "invalid_filter"


async def test_a_long_chain_of_nots_is_evaluated(master: TestClient[Any, Any]) -> None:
    await register(master, "web-1")
    for nots, expected in ((1000, ["web-1"]), (1001, [])):
        expression = "not " * nots + "ServiceName == web"  # deeper than Python's stack
        answer = await master.get("/v1/catalog/service/web", params={"filter": expression})
        assert answer.status == 200, await answer.text()
        assert [e["ServiceID"] for e in await answer.json()] == expected


@pytest.mark.parametrize(
    "pattern", ["(a|aa)+$", "(a+)+$", "(.*a){25}$", "^(a|a?)+$", "(x+x+)+y", "(\\w+\\s?)+$"]
)
def test_matches_takes_linear_time_whatever_the_pattern(pattern: str) -> None:
    from master.consul_filter import HEALTH_SERVICE_FIELDS, compile_filter

    keep = compile_filter(f"Checks.Output matches `{pattern}`", HEALTH_SERVICE_FIELDS)
    started = time.monotonic()
    for text in ("a" * 4000 + "!", "x" * 4000, "word " * 800 + "!"):
        keep({"Checks": [{"Output": text}]})
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "pattern",
    [
        "^web-",
        "-2$",
        "a.c",
        "a.*c",
        "^a+b?c*$",
        "x|y|abc",
        "[a-c]+-[^0-9]",
        "\\d{2,3}",
        "^(ab|cd){2}$",
        "\\bword\\b",
        "\\Bor",
        "(?i)WEB",
        "^$",
        "a{0}",
        "[\\w.]+@",
        "colou?r",
        "(a*)*b",
        "\\s",
        "^(?:x|xy)z$",
        "[^\\n]+",
        "(?s)a.b",
        "(?m)^b",
        "a{2,}",
        "a+?b",
        "(?i)^[^w]",
        "(?i)^[^a-z]",
        "(?i)^[^W]e",
        "(?i:b)x|W[^E]",
        "\\D\\W",
    ],
)
def test_matches_finds_what_a_regular_expression_finds(pattern: str) -> None:
    from master.consul_filter import CATALOG_SERVICE_FIELDS, compile_filter

    keep = compile_filter(f"ServiceName matches `{pattern}`", CATALOG_SERVICE_FIELDS)
    texts = ["", "web-1", "web-2", "abc", "aXc", "ac", "aabcc", "xyz", "abab", "cdab", "12",
             "a word.", "sword", "WeB", "colour", "color", "aaab", "b", "xyz", "xz", "x y",
             "a\nb", "user.name@host", "b-1", "aa", "a1"]  # fmt: skip
    for text in texts:
        assert keep({"ServiceName": text}) is (re.search(pattern, text) is not None), text


@pytest.mark.parametrize("pattern", ["((a{100}){100}){100}", "a{1001}", "(\\w{1000}){1000}"])
async def test_a_pattern_too_large_is_a_400_not_a_500(
    master: TestClient[Any, Any], pattern: str
) -> None:
    await register(master, "web-1", meta={"note": "abcdefghij" * 40})
    for path, selector in (("/v1/catalog/service/web", "ServiceMeta.note"),
                           ("/v1/catalog/services", "ServiceMeta.note"),
                           ("/v1/health/service/web", "Service.Meta.note")):  # fmt: skip
        answer = await master.get(path, params={"filter": f"{selector} matches `{pattern}`"})
        assert answer.status == 400, await answer.text()
        error = (await answer.json())["error"]
        assert error["code"] == "invalid_filter" and "regular expression" in error["message"]


async def test_a_blocking_catalog_query_on_an_empty_registry_blocks(
    master: TestClient[Any, Any],
) -> None:
    """The index shown for an empty registry is 1 (0 makes clients spin): asked back, it
    must wait for a change, not answer at once and have the client spin anyway."""
    _, headers = await get(master, "/v1/catalog/services")
    index = headers["X-Consul-Index"]
    assert index == "1"
    started = time.monotonic()
    body, headers = await get(master, f"/v1/catalog/services?index={index}&wait=1s")
    assert time.monotonic() - started >= 0.9
    assert body == {} and headers["X-Consul-Index"] == "1"
    waiting = asyncio.ensure_future(get(master, f"/v1/catalog/services?index={index}&wait=5s"))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await register(master, "web-1")
    body, headers = await asyncio.wait_for(waiting, 2)
    assert "web" in body and int(headers["X-Consul-Index"]) >= 1
