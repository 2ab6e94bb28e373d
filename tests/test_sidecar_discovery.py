"""Discovery through the sidecar (sidecar/discovery.py): the real master, the real sidecar
beside the Node.js test service, as processes, asked on loopback.

What a service gets from its sidecar equals what the master answers; a blocking query at
the sidecar wakes with the master's change; a master SIGKILLed and restarted fails no
lookup (each answered, stale and saying so while it is down) and its next change is in the
sidecar's answers within a second; the caps give what the README says; an unused
question's watcher stops; an idle sidecar asks the master nothing. The Consul clients and
Prometheus read a sidecar too: tests/test_consumer_*.py run against one (CATALOG_KINDS).
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from sidecar.checks import SharedCheck, build_check
from sidecar.config import load_config
from sidecar.desired import Desired
from sidecar.discovery import ANSWER_MAX, CACHE_BYTES, MAX_HELD, MAX_QUESTIONS, QUERY_MAX
from sidecar.master_client import MasterClient
from sidecar.server import Sidecar as SidecarParts
from sidecar.server import SidecarMetrics, build_server, discover, guard_and_render
from sidecar.sync import SyncLoop
from sidecar.watch import ConfigWatcher
from tests import consumer_fixture, service_fixture
from tests.conftest import Master, Response, http_request, wait_until
from tests.consumer_fixture import (
    READ_TOKEN,
    Sidecar,
    put_service,
    read_token_file,
    wait_for_status,
)
from tests.service_fixture import NodeService, unused_port

start_sidecar = consumer_fixture.start_sidecar
node_service = service_fixture.node_service

STALE: Final = "x-picoapi-stale"
CACHE: Final = "x-picoapi-cache"
WAKE_WITHIN: Final = 1.0
OTHER_HOST: Final = "192.0.2.7"  # TEST-NET-1: only ever a mocked peer address, never dialled


def get(base: str, path: str, timeout: float = 10.0) -> Response:
    return http_request("GET", base + path, timeout=timeout)


def with_query(path: str, query: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}{query}"


def discovery(sidecar: Sidecar) -> dict[str, Any]:
    figures: dict[str, Any] = get(sidecar.url, "/status").json()["discovery"]
    return figures


def services_of(answer: Response) -> list[str]:
    """The ids in an answer of any of the routes."""
    body = answer.json()
    if isinstance(body, dict) and "services" in body:
        return sorted(s["id"] for s in body["services"])
    if isinstance(body, dict):
        return sorted(body)  # /v1/catalog/services: the names
    return sorted(
        e.get("ServiceID") or (e.get("Service") or {}).get("ID") or e["labels"]["__meta_picoapi_id"]
        for e in body
    )


def comparable(path: str, answer: Response) -> tuple[int, Any, dict[str, str]]:
    """Status, body and the index headers a client follows. A listing without
    `last_check`, which a check that only confirms a status refreshes at the master without
    moving the index (a blocking query at the master does not see it either). One service's
    Consul answer follows its X-Consul-Index: its X-Picoapi-Index (the whole registry's)
    is the one it was fetched at."""
    body = answer.json()
    if path.startswith("/v1/services"):
        for record in body["services"]:
            record.pop("last_check", None)
    per_name = path.startswith(("/v1/catalog/service/", "/v1/health/service/"))
    followed = ("x-consul-index",) if per_name else ("x-consul-index", "x-picoapi-index")
    headers = {k: v for k, v in answer.headers.items() if k in followed}
    return answer.status, body, headers


@pytest.fixture
def web_sidecar(
    start_master: Callable[..., Master],
    start_sidecar: Callable[..., Sidecar],
    node_service: NodeService,
) -> tuple[Master, Sidecar]:
    """A master with web-1 (the Node.js service, through its sidecar), web-2 and db-1."""
    master = start_master()
    sidecar = start_sidecar(node_service, master.url, name="web", ident="web-1", tags=["v1"])
    put_service(master, "web-2", "web", port=8082, tags=["v2"], meta={"team": "data"})
    put_service(master, "db-1", "db", port=5432)
    wait_for_status(master, {"web-1": "passing", "web-2": "passing"})
    return master, sidecar


QUESTIONS: Final = [
    "/v1/services",
    "/v1/services?name=web",
    "/v1/services?tag=v2&name=web",
    "/v1/services?status=passing",
    "/v1/catalog/services",
    '/v1/catalog/services?filter=ServiceMeta.team%20%3D%3D%20"data"',
    "/v1/catalog/service/web",
    "/v1/catalog/service/web?tag=v1",
    "/v1/health/service/web?passing",
    "/v1/health/service/web?filter=" + urllib.parse.quote('Service.Meta.team == "data"'),
    "/v1/health/service/nothing",
    "/v1/prometheus/targets?name=web",
]


def test_answers_equal_the_masters_fetched_and_then_cached(
    web_sidecar: tuple[Master, Sidecar],
) -> None:
    master, sidecar = web_sidecar
    for path in QUESTIONS:
        first = get(sidecar.url, path)
        assert first.headers[CACHE] == "miss", path
        assert comparable(path, first) == comparable(path, get(master.url, path)), path
    # A change, then every cached answer follows it: equal to the master's again.
    put_service(master, "web-3", "web", port=8083, tags=["v1"], meta={"team": "data"})
    index = master.request("GET", "/v1/services").headers["x-picoapi-index"]
    wait_until(
        lambda: get(sidecar.url, "/v1/services").headers["x-picoapi-index"] == index,
        timeout=WAKE_WITHIN,
        message="the sidecar at the master's index",
    )
    for path in QUESTIONS:
        cached = get(sidecar.url, path)
        assert cached.headers[CACHE] == "hit", path
        assert comparable(path, cached) == comparable(path, get(master.url, path)), path
    assert "web-3" in services_of(get(sidecar.url, "/v1/catalog/service/web?tag=v1"))
    figures = discovery(sidecar)
    assert figures["questions"] == figures["watchers"] == len(QUESTIONS)
    assert figures["answers"] == {"hit": len(QUESTIONS) + 2, "miss": len(QUESTIONS)}
    assert figures["master"]["reachable"] is True


@pytest.mark.parametrize(
    ("path", "shown"),
    [("/v1/services?name=web", "x-picoapi-index"), ("/v1/health/service/web", "x-consul-index")],
)
def test_a_blocking_query_at_the_sidecar_wakes_within_a_second_of_a_registration(
    web_sidecar: tuple[Master, Sidecar], path: str, shown: str
) -> None:
    master, sidecar = web_sidecar
    index = int(get(sidecar.url, path).headers[shown])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(get, sidecar.url, with_query(path, f"index={index}&wait=20s"), 30)
        time.sleep(0.5)
        assert not pending.done(), "a blocking query at a current index must wait"
        registered = time.monotonic()
        put_service(master, "web-3", "web", port=8083)
        answer = pending.result(10)
        woke = time.monotonic() - registered
    assert answer.status == 200 and int(answer.headers[shown]) > index
    assert "web-3" in services_of(answer)
    assert woke < WAKE_WITHIN, f"woke {woke:.2f}s after the registration"


class Lookups(threading.Thread):
    """Asks the sidecar these questions in a loop, every ~20 ms, until stopped (or 60 s,
    or 20 000 lookups): every answer kept with its time."""

    def __init__(self, base: str, paths: list[str]) -> None:
        super().__init__(daemon=True)
        self.base, self.paths = base, paths
        self.halt = threading.Event()
        self.seen: list[tuple[float, str, int | None, str | None, bytes]] = []

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not self.halt.is_set() and time.monotonic() < deadline and len(self.seen) < 20000:
            for path in self.paths:
                at = time.monotonic()
                try:
                    answer = get(self.base, path, timeout=5)
                    self.seen.append(
                        (at, path, answer.status, answer.headers.get(STALE), answer.body)
                    )
                except OSError as exc:
                    self.seen.append((at, path, None, repr(exc), b""))
            time.sleep(0.02)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def test_no_lookup_fails_while_the_master_is_sigkilled_and_restarted(
    start_master: Callable[..., Master],
    start_sidecar: Callable[..., Sidecar],
    node_service: NodeService,
) -> None:
    port = unused_port()
    master = start_master("--listen", f"127.0.0.1:{port}")  # SQLite: the restart keeps it
    sidecar = start_sidecar(node_service, master.url, name="web", ident="web-1")
    put_service(master, "web-2", "web", port=8082)
    wait_for_status(master, {"web-1": "passing"})
    paths = ["/v1/services?name=web", "/v1/health/service/web?passing", "/v1/catalog/services"]
    before = {path: get(sidecar.url, path).body for path in paths}
    lookups = Lookups(sidecar.url, paths)
    lookups.start()
    try:
        time.sleep(0.3)
        master.kill()
        killed = time.monotonic()
        time.sleep(0.5)
        # A blocking query during the outage waits its time, then answers, stale.
        index = get(sidecar.url, paths[0]).headers["x-picoapi-index"]
        asked = time.monotonic()
        blocked = get(sidecar.url, f"{paths[0]}&index={index}&wait=1s")
        assert blocked.status == 200 and 0.9 < time.monotonic() - asked < 2.0
        assert float(blocked.headers[STALE]) >= 1.0 and blocked.body == before[paths[0]]
        health = get(sidecar.url, paths[1])
        assert health.headers["x-consul-knownleader"] == "false"
        assert int(health.headers["x-consul-lastcontact"]) >= 1000
        time.sleep(0.5)
        restarting = time.monotonic()
        start_master("--listen", f"127.0.0.1:{port}")
        assert http_request("GET", f"{master.url}/healthz").status == 200
        changed = time.monotonic()
        put_service(master, "web-9", "web", port=8089, tags=["nine"])
        wait_until(
            lambda: (
                "web-9" in services_of(get(sidecar.url, paths[0]))
                and "web-9" in services_of(get(sidecar.url, paths[1]))
                and get(sidecar.url, paths[2]).json() == {"web": ["nine"]}
            ),
            timeout=WAKE_WITHIN,
            interval=0.02,
            message="the change after the restart in the sidecar's answers",
        )
        visible = time.monotonic() - changed
        time.sleep(0.3)
    finally:
        lookups.stop()
    failed = [(at, path, status, why) for at, path, status, why, _ in lookups.seen if status != 200]
    assert not failed, failed
    down = [s for s in lookups.seen if killed + 0.1 < s[0] < restarting]
    assert len(down) > 30, "too few lookups while the master was down"
    for _, path, _, stale, body in down:
        assert stale is not None, f"{path}: no {STALE} while the master was down"
        assert body == before[path], "an answer changed while the master was down"
    late = [s for s in lookups.seen if s[0] > changed + visible + 0.05]
    assert late and all(stale is None for _, _, _, stale, _ in late)
    assert visible < WAKE_WITHIN
    figures = discovery(sidecar)
    assert figures["master"]["reachable"] is True and figures["master_failures"] > 0


def test_past_the_question_cap_a_question_is_passed_through(
    web_sidecar: tuple[Master, Sidecar],
) -> None:
    master, sidecar = web_sidecar
    for n in range(MAX_QUESTIONS):
        assert get(sidecar.url, f"/v1/services?name=q{n}").headers[CACHE] == "miss"
    past = get(sidecar.url, "/v1/services?name=web")
    assert past.status == 200 and past.headers[CACHE] == "pass"
    assert past.body == get(master.url, "/v1/services?name=web").body
    assert get(sidecar.url, "/v1/services?name=web").headers[CACHE] == "pass"  # still not kept
    assert get(sidecar.url, "/v1/services?name=q0").headers[CACHE] == "hit"
    figures = discovery(sidecar)
    assert figures["questions"] == MAX_QUESTIONS and figures["answers"]["pass"] == 2
    # Passed through, it does not outlive the master; the cached ones do.
    master.kill()
    gone = get(sidecar.url, "/v1/services?name=web")
    assert gone.status == 503 and gone.json()["error"]["code"] == "master_unreachable"
    assert gone.headers["retry-after"] == "1"
    assert get(sidecar.url, "/v1/services?name=q1").status == 200


def document(size: int, title: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": "1", "description": "d" * size},
        "paths": {},
    }


def put_with_document(master: Master, ident: str, size: int) -> None:
    body = {"name": ident, "address": "127.0.0.1", "port": 8080, "openapi": document(size, ident)}
    answer = master.request("PUT", f"/v1/services/{ident}", body, timeout=30)
    assert answer.status == 200, answer


def test_cached_bytes_are_capped_least_recently_used_first_and_a_large_answer_passes(
    web_sidecar: tuple[Master, Sidecar],
) -> None:
    master, sidecar = web_sidecar
    third = CACHE_BYTES // 3 + 4096  # three of them are past the cap
    for ident in ("big-a", "big-b", "big-c"):
        put_with_document(master, ident, third)
    put_with_document(master, "huge", ANSWER_MAX + 1024)
    for ident in ("big-a", "big-b"):
        assert get(sidecar.url, f"/v1/services?openapi=true&name={ident}").headers[CACHE] == "miss"
    get(sidecar.url, "/v1/services?openapi=true&name=big-a")  # big-b is now the least recent
    assert discovery(sidecar)["questions"] == 2
    answer = get(sidecar.url, "/v1/services?openapi=true&name=big-c")
    assert answer.headers[CACHE] == "miss" and len(answer.body) > third
    figures = discovery(sidecar)
    assert figures["cached_bytes"] <= CACHE_BYTES
    assert figures["dropped"] == {"evicted": 1}
    assert sorted(w["question"] for w in figures["watched"]) == [
        "/v1/services?name=big-a&openapi=true",
        "/v1/services?name=big-c&openapi=true",
    ]
    assert get(sidecar.url, "/v1/services?openapi=true&name=big-a").headers[CACHE] == "hit"
    # Over ANSWER_MAX: passed through whole, never kept.
    for _ in range(2):
        huge = get(sidecar.url, "/v1/services?openapi=true&name=huge", timeout=30)
        assert huge.status == 200 and huge.headers[CACHE] == "pass"
        assert huge.body == get(master.url, "/v1/services?openapi=true&name=huge", timeout=30).body
    figures = discovery(sidecar)
    assert figures["dropped"]["too_large"] == 2 and figures["cached_bytes"] <= CACHE_BYTES


def test_past_the_cap_on_held_requests_a_blocking_query_is_503(
    web_sidecar: tuple[Master, Sidecar],
) -> None:
    master, sidecar = web_sidecar
    path = "/v1/services?name=web"
    index = get(sidecar.url, path).headers["x-picoapi-index"]
    with concurrent.futures.ThreadPoolExecutor(MAX_HELD) as pool:
        held = [
            pool.submit(get, sidecar.url, f"{path}&index={index}&wait=30s", 40)
            for _ in range(MAX_HELD)
        ]
        wait_until(
            lambda: discovery(sidecar)["waiting"] == MAX_HELD, timeout=15, message="all held"
        )
        refused = get(sidecar.url, f"{path}&index={index}&wait=30s")
        assert refused.status == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "too_many_waiters"
        assert get(sidecar.url, path).status == 200, "a lookup that does not wait still answers"
        put_service(master, "web-3", "web", port=8083)
        answers = [f.result(10) for f in held]
    assert all(a.status == 200 and "web-3" in services_of(a) for a in answers)
    assert discovery(sidecar)["answers"]["busy"] == 1


def test_an_unused_question_loses_its_watcher(
    start_master: Callable[..., Master],
    start_sidecar: Callable[..., Sidecar],
    node_service: NodeService,
) -> None:
    master = start_master()
    sidecar = start_sidecar(
        node_service, master.url, name="web", ident="web-1", discovery_idle="2s"
    )
    assert get(sidecar.url, "/v1/services?name=web").status == 200
    figures = discovery(sidecar)
    assert (figures["questions"], figures["watchers"], figures["started"]) == (1, 1, 1)
    # While asked, its loop runs: a blocking query at a time, each as long as what is left
    # of the idle time (at least 1 s), so one goes to the master every second or two.
    first = figures["master_queries"]
    asked_until = time.monotonic() + 3.5
    while time.monotonic() < asked_until:
        assert get(sidecar.url, "/v1/services?name=web").headers[CACHE] == "hit"
        last_asked = time.monotonic()
        time.sleep(0.25)
    assert discovery(sidecar)["master_queries"] >= first + 2, "the watcher did not ask again"
    # Unasked: stopped once its last blocking query ends past the idle time (2 s + 2 s).
    wait_until(
        lambda: discovery(sidecar)["watchers"] == 0, timeout=6, message="the watcher stopped"
    )
    assert time.monotonic() - last_asked > 1.9, "stopped before the idle time"
    figures = discovery(sidecar)
    assert figures["questions"] == 0 and figures["cached_bytes"] == 0
    assert figures["dropped"] == {"idle": 1}
    stopped_at = figures["master_queries"]
    time.sleep(1.5)
    assert discovery(sidecar)["master_queries"] == stopped_at, "asked the master after it stopped"
    # Asked again: a new watcher, from a fresh fetch.
    assert get(sidecar.url, "/v1/services?name=web").headers[CACHE] == "miss"
    assert discovery(sidecar)["started"] == 2


def master_reads(master: Master) -> float:
    """Reads of the discovery routes the master has answered, from its /metrics."""
    text = master.request("GET", "/metrics").body.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("picoapi_http_requests_total{") and 'method="GET"' in line:
            route = line.split('route="', 1)[1].split('"', 1)[0]
            if route.startswith(("/v1/services", "/v1/catalog", "/v1/health", "/v1/prometheus")):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_an_idle_sidecar_runs_no_watcher_and_asks_the_master_nothing(
    web_sidecar: tuple[Master, Sidecar],
) -> None:
    master, sidecar = web_sidecar
    reads = master_reads(master)
    time.sleep(1.5)
    figures = discovery(sidecar)
    assert figures["questions"] == figures["watchers"] == figures["started"] == 0
    assert figures["cached_bytes"] == figures["master_queries"] == 0
    assert figures["master"]["reachable"] is None
    metrics = get(sidecar.url, "/metrics").body.decode()
    assert "picoapi_sidecar_discovery_questions 0.0" in metrics
    assert master_reads(master) == reads, "an idle sidecar read the master"
    # One question, and the same figures move.
    get(sidecar.url, "/v1/catalog/services")
    metrics = get(sidecar.url, "/metrics").body.decode()
    assert "picoapi_sidecar_discovery_questions 1.0" in metrics
    assert 'picoapi_sidecar_discovery_answers_total{how="miss"} 1.0' in metrics
    assert master_reads(master) > reads


def test_what_the_sidecar_refuses_and_what_it_relays(
    web_sidecar: tuple[Master, Sidecar],
) -> None:
    master, sidecar = web_sidecar
    # The master's 400 is relayed as it is, and not kept.
    path = "/v1/health/service/web?filter=" + urllib.parse.quote("Service.Nope == 1")
    bad = get(sidecar.url, path)
    assert bad.status == 400 and bad.json() == get(master.url, path).json()
    assert bad.json()["error"]["code"] == "invalid_filter"
    assert get(sidecar.url, "/v1/services?status=sleepy").status == 400
    assert discovery(sidecar)["questions"] == 0
    # The blocking parameters are checked here, as the master checks them.
    for query, field in (("index=x", "index"), ("index=1&wait=soon", "wait")):
        answer = get(sidecar.url, f"/v1/services?{query}")
        assert answer.status == 400 and answer.json()["error"]["field"] == field
    long = get(sidecar.url, "/v1/services?name=" + "a" * QUERY_MAX)
    assert long.status == 414 and long.json()["error"]["code"] == "query_too_long"
    # What a Consul agent serves and a sidecar does not: a clear 501, as at the master.
    for method, path in (
        ("PUT", "/v1/agent/service/register"),
        ("GET", "/v1/kv/x"),
        ("GET", "/v1/catalog/nodes"),
    ):
        answer = http_request(method, sidecar.url + path)
        assert answer.status == 501, (method, path, answer)
        assert answer.json()["error"]["message"].startswith("read-only catalog: not supported")
    answer = http_request("POST", sidecar.url + "/v1/services")
    assert answer.status == 405 and answer.headers["allow"] == "GET,HEAD"
    # A new question while no master answers: 503, nothing to answer it from.
    master.kill()
    away = get(sidecar.url, "/v1/services?name=never-asked")
    assert away.status == 503 and away.json()["error"]["code"] == "master_unreachable"
    assert "connection refused" in away.json()["error"]["message"]


def test_the_sidecar_reads_with_its_own_token_and_relays_the_masters_refusal(
    start_master: Callable[..., Master],
    start_sidecar: Callable[..., Sidecar],
    node_service: NodeService,
    tmp_path: Path,
) -> None:
    master = start_master("--read-token-file", str(read_token_file(tmp_path)))
    with_token = start_sidecar(
        node_service, master.url, name="web", ident="web-1", master_token=READ_TOKEN
    )
    without = start_sidecar(node_service, master.url, name="web", ident="web-2")
    # Its own token, whatever the caller sends (a wrong one is not passed on).
    answer = http_request(
        "GET", f"{with_token.url}/v1/catalog/service/web", headers={"X-Consul-Token": "wrong"}
    )
    assert answer.status == 200 and services_of(answer) == ["web-1", "web-2"]
    # No token of its own: the master's 401, relayed, and not kept; a caller's is not lent.
    refused = http_request(
        "GET", f"{without.url}/v1/catalog/service/web", headers={"X-Consul-Token": READ_TOKEN}
    )
    assert refused.status == 401 and refused.headers[CACHE] == "miss"
    assert "token" in refused.json()["error"]["message"]
    assert discovery(without)["questions"] == 0


def parts(tmp_path: Path, master_lines: str) -> SidecarParts:
    """The sidecar's parts in process, never started: for who-may-ask, nothing is sent."""
    path = tmp_path / "service.yaml"
    path.write_text(
        "service:\n  name: web\n  id: web-1\n  address: 127.0.0.1\n  port: 8080\n"
        f"master:\n  url: http://127.0.0.1:9\n{master_lines}"
        "sidecar:\n  listen: 127.0.0.1:9599\n"
    )
    config = load_config(path, {})
    session = mock.Mock()
    desired = Desired(config, "this-host:9599")
    sync = SyncLoop(desired, MasterClient(session), session)
    watcher = ConfigWatcher(config.path, config, desired.update_config)
    return SidecarParts(
        str(path), sync, SharedCheck(build_check(config.check, session)), watcher, SidecarMetrics()
    )


async def ask_as(parts: SidecarParts, remote: str) -> web.StreamResponse:
    """/v1/services through the server's middleware as if from `remote` (a mocked peer)."""
    app = build_server(parts)
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda key, default=None: (
        (remote, 40000) if key == "peername" else default
    )
    request = make_mocked_request("GET", "/v1/services", app=app, transport=transport)
    return await guard_and_render(request, discover)


@pytest.mark.parametrize("remote", ["127.0.0.1", "::1", OTHER_HOST, "10.0.0.9"])
async def test_a_sidecar_with_a_master_token_answers_loopback_callers_only(
    tmp_path: Path, remote: str
) -> None:
    loopback = remote in ("127.0.0.1", "::1")
    lent = parts(tmp_path, f"  token: {READ_TOKEN}\n")
    open_ = parts(tmp_path, "")
    served = web.json_response({"served": True})
    for sidecar in (lent, open_):
        sidecar.discovery.answer = mock.AsyncMock(return_value=served)  # type: ignore[method-assign]
    answer = await ask_as(lent, remote)
    if loopback:
        assert answer is served
    else:
        assert answer.status == 403
        assert isinstance(answer, web.Response) and answer.text is not None
        error = json.loads(answer.text)["error"]
        assert error["code"] == "forbidden" and "loopback callers only" in error["message"]
    # Without a token it reads only what the master gives anyone: everyone is answered.
    assert await ask_as(open_, remote) is served


def test_a_question_with_blocking_queries_held_is_not_the_one_evicted(
    web_sidecar: tuple[Master, Sidecar],
) -> None:
    """The least recently asked question goes first, but one with clients blocked on it
    now is in use: evicting it would answer them at once with the index they hold."""
    master, sidecar = web_sidecar
    third = CACHE_BYTES // 3 + 4096  # three of them are past the cap
    for ident in ("big-a", "big-b", "big-c"):
        put_with_document(master, ident, third)
    held_path = "/v1/services?openapi=true&name=big-a"
    index = get(sidecar.url, held_path).headers["x-picoapi-index"]
    get(sidecar.url, "/v1/services?openapi=true&name=big-b")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(get, sidecar.url, f"{held_path}&index={index}&wait=4s", 30)
        wait_until(lambda: discovery(sidecar)["waiting"] == 1, timeout=5, message="held")
        get(sidecar.url, "/v1/services?openapi=true&name=big-b")  # asked after big-a was
        assert get(sidecar.url, "/v1/services?openapi=true&name=big-c").status == 200
        time.sleep(1.0)
        assert not pending.done(), "a held blocking query answered early by an eviction"
        answer = pending.result(10)
    assert answer.status == 200 and answer.headers["x-picoapi-index"] == index
    figures = discovery(sidecar)
    assert figures["dropped"] == {"evicted": 1} and figures["cached_bytes"] <= CACHE_BYTES
    assert sorted(w["question"] for w in figures["watched"]) == [
        "/v1/services?name=big-a&openapi=true",
        "/v1/services?name=big-c&openapi=true",
    ]


def test_a_blocking_query_whose_client_hangs_up_is_no_longer_held(
    web_sidecar: tuple[Master, Sidecar],
) -> None:
    """A client gone (its own timeout shorter than `wait`) holds no slot of MAX_HELD, nor
    a pass-through's connection to the master, for the rest of its wait."""
    _, sidecar = web_sidecar
    path = "/v1/services?name=web"
    index = get(sidecar.url, path).headers["x-picoapi-index"]
    for _ in range(MAX_QUESTIONS):  # then a new question passes through, blocking
        get(sidecar.url, f"/v1/services?name=q{_}")
    for query in (
        f"{path}&index={index}&wait=60s",
        f"/v1/services?name=new&index={index}&wait=60s",
    ):
        with socket.create_connection(("127.0.0.1", sidecar.port)) as conn:
            conn.sendall(f"GET {query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            wait_until(lambda: discovery(sidecar)["waiting"] == 1, timeout=5, message="held")
        wait_until(
            lambda: discovery(sidecar)["waiting"] == 0,
            timeout=3,
            message="a hung-up client still held",
        )
        assert discovery(sidecar)["passing_through"] == 0
