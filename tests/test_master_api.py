"""The master as a process, driven over HTTP: registration, queries, blocking, auth, limits."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from master.store.sqlite import SCHEMA_V2
from tests import etcd_fixture
from tests.conftest import Master, wait_until
from tests.etcd_fixture import store_url

etcd = etcd_fixture.etcd  # bound, not imported: no F811 on uses


def registration(ident: str = "web-1", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ident,
        "name": "web",
        "address": "127.0.0.1",
        "port": 8080,
        "tags": ["web_crawler", "examplehost.com", "dirty"],
        "meta": {"team": "data"},
    }
    body.update(fields)
    return body


@pytest.fixture(params=["sqlite", "memory", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test of the API against each store: the contract does not depend on it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/registry.db"
    if request.param == "memory":
        return "memory://"
    return store_url(request.getfixturevalue("etcd"))


@pytest.fixture
def master(start_master: Any, store: str) -> Master:
    return start_master(store=store)


def test_register_returns_record_and_lists_it(master: Master) -> None:
    answer = master.request("PUT", "/v1/services/web-1", registration())
    assert answer.status == 200, answer
    record = answer.json()
    assert record["id"] == "web-1"
    assert record["status"] == "passing"  # no check: passing
    assert record["tags"] == ["web_crawler", "examplehost.com", "dirty"]
    assert record["openapi_sha256"] is None and record["last_check"] is None
    assert "openapi" not in record
    listed = master.request("GET", "/v1/services").json()
    assert [s["id"] for s in listed["services"]] == ["web-1"]
    assert listed["index"] == int(answer.headers["x-picoapi-index"])
    one = master.request("GET", "/v1/services/web-1")
    assert one.status == 200 and one.json()["name"] == "web"


def test_every_answer_carries_the_index_header(master: Master) -> None:
    for path in ("/v1/services", "/v1/tags", "/healthz", "/metrics", "/v1/services/nope"):
        assert master.request("GET", path).headers["x-picoapi-index"].isdigit(), path


def test_filters_by_tags_name_and_status(master: Master) -> None:
    master.request("PUT", "/v1/services/a", registration("a", tags=["x", "y"]))
    master.request("PUT", "/v1/services/b", registration("b", name="other", tags=["x"]))
    master.request(
        "PUT",
        "/v1/services/c",
        registration("c", tags=["y"], check={"url": "http://127.0.0.1:1/health", "interval": "1h"}),
    )

    def ids(query: str) -> list[str]:
        return [s["id"] for s in master.request("GET", f"/v1/services?{query}").json()["services"]]

    assert ids("tag=x") == ["a", "b"]
    assert ids("tag=x&tag=y") == ["a"]
    assert ids("tag=nope") == []
    assert ids("name=other") == ["b"]
    assert ids("name=web&tag=y") == ["a", "c"]
    assert ids("status=passing") == ["a", "b"]
    assert master.request("GET", "/v1/tags").json() == {"x": 2, "y": 2}
    metrics = master.request("GET", "/metrics").body.decode()
    assert 'picoapi_services{status="passing"} 2.0' in metrics
    bad = master.request("GET", "/v1/services?status=sick")
    assert bad.status == 400 and bad.json()["error"]["field"] == "status"


def test_openapi_document_is_kept_until_removed(master: Master) -> None:
    doc = {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {}}
    first = master.request("PUT", "/v1/services/a", registration("a", openapi=doc)).json()
    assert len(first["openapi_sha256"]) == 64
    # absent keeps it
    again = master.request("PUT", "/v1/services/a", registration("a", tags=["new"])).json()
    assert again["openapi_sha256"] == first["openapi_sha256"]
    assert master.request("GET", "/v1/services/a/openapi").json() == doc
    listed = master.request("GET", "/v1/services?openapi=true").json()["services"]
    assert listed[0]["openapi"] == doc
    # null removes it
    gone = master.request("PUT", "/v1/services/a", registration("a", openapi=None)).json()
    assert gone["openapi_sha256"] is None
    assert master.request("GET", "/v1/services/a/openapi").status == 404


def test_identical_put_changes_nothing(master: Master) -> None:
    first = master.request("PUT", "/v1/services/a", registration("a"))
    second = master.request("PUT", "/v1/services/a", registration("a"))
    assert first.headers["x-picoapi-index"] == second.headers["x-picoapi-index"]
    assert first.json()["updated_at"] == second.json()["updated_at"]
    third = master.request("PUT", "/v1/services/a", registration("a", tags=["other"]))
    assert int(third.headers["x-picoapi-index"]) == int(first.headers["x-picoapi-index"]) + 1
    assert third.json()["registered_at"] == first.json()["registered_at"]


def test_delete(master: Master) -> None:
    master.request("PUT", "/v1/services/a", registration("a"))
    assert master.request("DELETE", "/v1/services/a").status == 200
    assert master.request("DELETE", "/v1/services/a").status == 404
    assert master.request("GET", "/v1/services/a").status == 404


# --- blocking queries ------------------------------------------------------------------


async def test_blocking_query_wakes_early_on_change(master: Master) -> None:
    index = int(master.request("GET", "/v1/services").headers["x-picoapi-index"])
    async with aiohttp.ClientSession() as session:
        waiters = [
            asyncio.ensure_future(session.get(f"{master.url}/v1/services?index={index}&wait=20s"))
            for _ in range(50)
        ]
        await asyncio.sleep(0.3)
        assert not any(w.done() for w in waiters)
        started = time.monotonic()
        await asyncio.to_thread(master.request, "PUT", "/v1/services/a", registration("a"))
        answers = await asyncio.gather(*waiters)
        elapsed = time.monotonic() - started
        bodies = [await a.json() for a in answers]
    assert elapsed < 5
    # A local store counts its own commits; etcd's revision also counts others' writes.
    moved = index + 1 if "etcd://" not in " ".join(master.argv) else bodies[0]["index"]
    assert moved > index
    assert all(b["index"] == moved and b["services"][0]["id"] == "a" for b in bodies)


def test_blocking_query_waits_full_time_when_nothing_changes(master: Master) -> None:
    index = master.request("GET", "/v1/services").headers["x-picoapi-index"]
    started = time.monotonic()
    answer = master.request("GET", f"/v1/services?index={index}&wait=1500ms")
    elapsed = time.monotonic() - started
    assert answer.status == 200
    assert answer.headers["x-picoapi-index"] == index
    assert 1.4 <= elapsed < 4


def test_blocking_query_with_future_index_answers_at_once(master: Master) -> None:
    started = time.monotonic()
    answer = master.request("GET", "/v1/services?index=999999&wait=10s")
    assert answer.status == 200 and time.monotonic() - started < 2


def test_blocking_query_not_woken_by_identical_put(master: Master) -> None:
    master.request("PUT", "/v1/services/a", registration("a"))
    index = master.request("GET", "/v1/services").headers["x-picoapi-index"]

    async def scenario() -> float:
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            waiter = asyncio.ensure_future(
                session.get(f"{master.url}/v1/services?index={index}&wait=1500ms")
            )
            await asyncio.sleep(0.2)
            await asyncio.to_thread(master.request, "PUT", "/v1/services/a", registration("a"))
            await waiter
            return time.monotonic() - started

    assert asyncio.run(scenario()) >= 1.4


# --- durability ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "etcd"])
def test_every_acknowledged_write_survives_sigkill(
    start_master: Any, tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    if kind == "sqlite":
        store = f"sqlite:///{tmp_path}/durable.db"
    else:
        store = store_url(request.getfixturevalue("etcd"))
    master = start_master(store=store)

    async def register_many() -> list[str]:
        acked: list[str] = []
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> None:
                body = registration(f"svc-{i}", tags=[f"t{i % 7}"])
                async with session.put(f"{master.url}/v1/services/svc-{i}", json=body) as r:
                    if r.status == 200:
                        acked.append(f"svc-{i}")

            for batch in range(0, 600, 100):
                await asyncio.gather(*(one(i) for i in range(batch, batch + 100)))
        return acked

    acked = asyncio.run(register_many())
    deleted = master.request("DELETE", "/v1/services/svc-0")
    assert deleted.status == 200
    master.kill()  # SIGKILL right after the last 200
    assert len(acked) == 600
    again = start_master(store=store)
    ids = {s["id"] for s in again.request("GET", "/v1/services").json()["services"]}
    assert ids == set(acked) - {"svc-0"}


def test_sigterm_exits_zero_and_logs_shutdown(master: Master) -> None:
    master.request("PUT", "/v1/services/a", registration("a"))
    master.signal(signal.SIGTERM)
    assert master.wait(10) == 0
    names = [e.get("event") for e in master.events()]
    assert "shutdown_requested" in names and "master_stopped" in names


def test_bad_flag_exits_2_with_reason(tmp_path: Path) -> None:
    binary = Path(sys.executable).parent / "picoapi-master"
    done = subprocess.run(
        [str(binary), "--listen", "nowhere"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "listen" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(
        [str(binary), "--store", "mongo://x"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "mongo" in done.stderr and "Traceback" not in done.stderr


# --- auth ------------------------------------------------------------------------------


def test_tokens_missing_wrong_right_and_rotated(start_master: Any, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# writers\nold-token\n")
    master = start_master("--token-file", str(tokens))
    body = registration("a")
    missing = master.request("PUT", "/v1/services/a", body)
    assert missing.status == 401 and missing.json()["error"]["code"] == "unauthorized"
    wrong = master.request("PUT", "/v1/services/a", body, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    right = master.request(
        "PUT", "/v1/services/a", body, headers={"Authorization": "Bearer old-token"}
    )
    assert right.status == 200
    assert master.request("GET", "/v1/services").status == 200  # reads stay open
    assert master.request("DELETE", "/v1/services/a").status == 401
    # rotate: new token added, then old one removed, with no restart
    tokens.write_text("old-token\nnew-token\n")

    def accepted(token: str) -> bool:
        answer = master.request(
            "PUT",
            "/v1/services/a",
            registration("a", tags=[token]),
            headers={"Authorization": f"Bearer {token}"},
        )
        return answer.status == 200

    wait_until(lambda: accepted("new-token"), timeout=5, message="new token accepted")
    tokens.write_text("new-token\n")
    wait_until(lambda: not accepted("old-token"), timeout=5, message="old token refused")
    assert accepted("new-token")


def test_read_token_guards_reads(start_master: Any, tmp_path: Path) -> None:
    (tmp_path / "write").write_text("w\n")
    (tmp_path / "read").write_text("r\n")
    master = start_master(
        "--token-file", str(tmp_path / "write"), "--read-token-file", str(tmp_path / "read")
    )
    assert master.request("GET", "/v1/services").status == 401
    assert (
        master.request("GET", "/v1/services", headers={"Authorization": "Bearer r"}).status == 200
    )
    assert (
        master.request("GET", "/v1/services", headers={"Authorization": "Bearer w"}).status == 200
    )
    put = master.request(
        "PUT", "/v1/services/a", registration("a"), headers={"Authorization": "Bearer r"}
    )
    assert put.status == 401  # a read token cannot write
    assert master.request("GET", "/healthz").status == 200  # liveness stays open for probes


# --- the compatibility routes ----------------------------------------------------------


def test_original_picoapi_body_shows_up(master: Master) -> None:
    body = {
        "name": "web_crawler",
        "tags": ["web_crawler", ""],
        "host": "127.0.0.1",
        "port": "8000",
        "metadata": None,
        "healthcheck": {"url": "http://127.0.0.1:1/health", "interval": "30"},
    }
    assert master.request("PUT", "/register", body).status == 200
    services = master.request("GET", "/v1/services").json()["services"]
    assert len(services) == 1
    assert services[0]["port"] == 8000 and services[0]["tags"] == ["web_crawler"]
    assert services[0]["check"]["interval"] == "30s"
    assert master.request("PUT", "/register", body).status == 200  # a restart replaces
    assert len(master.request("GET", "/v1/services").json()["services"]) == 1


def test_a_held_id_answers_409_and_a_stranger_cannot_remove_it(master: Master) -> None:
    assert (
        master.request("PUT", "/v1/services/web-1", registration(instance="a:9501")).status == 200
    )
    refused = master.request("PUT", "/v1/services/web-1", registration(instance="b:9501", port=1))
    assert refused.status == 409, refused
    error = refused.json()["error"]
    assert (error["code"], error["field"]) == ("id_conflict", "id")
    assert "a:9501" in error["message"]
    assert master.request("GET", "/v1/services/web-1").json()["port"] == 8080
    stranger = master.request("DELETE", "/v1/services/web-1?instance=b:9501")
    assert stranger.status == 409 and stranger.json()["error"]["code"] == "id_conflict"
    assert master.request("DELETE", "/v1/services/web-1?instance=a:9501").status == 200
    events = [e for e in master.events() if e.get("event") == "id_conflict"]
    assert events and events[0]["holder"] == "a:9501" and events[0]["caller"] == "b:9501"


def test_a_second_master_on_the_same_sqlite_file_exits_2_naming_it(
    start_master: Any, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/one.db"
    first = start_master(store=store)
    second = start_master(store=store, wait=False)
    assert second.wait(10) == 2
    said = second.log_path.read_text()
    assert f"{tmp_path}/one.db is in use by another master (pid {first.pid} " in said
    assert "Traceback" not in said
    assert first.request("PUT", "/v1/services/a", registration("a")).status == 200
    first.stop()
    third = start_master(store=store)  # once the holder is gone, the file is free again
    assert "a" in {s["id"] for s in third.request("GET", "/v1/services").json()["services"]}


def test_healthz_says_when_writes_fail_and_when_they_work_again(
    start_master: Any, tmp_path: Path
) -> None:
    path = tmp_path / "failing.db"
    master = start_master(store=f"sqlite:///{path}")
    assert master.request("PUT", "/v1/services/a", registration("a")).status == 200
    with sqlite3.connect(path) as other:
        other.execute("DROP TABLE services")  # as a full disk would: every commit fails
    refused = master.request("PUT", "/v1/services/b", registration("b"))
    assert refused.status == 503 and refused.headers["retry-after"] == "1"
    health = master.request("GET", "/healthz")
    assert health.status == 200  # alive: a liveness probe must not restart it
    assert health.json()["status"] == "degraded"
    assert health.json()["store"]["writes"] == "failing"
    assert master.request("GET", "/healthz?ready").status == 503  # a readiness probe can tell
    with sqlite3.connect(path) as other:
        other.execute(SCHEMA_V2[0])
    assert master.request("PUT", "/v1/services/b", registration("b")).status == 200
    assert master.request("GET", "/healthz?ready").json()["store"]["writes"] == "ok"


def test_a_scoped_token_writes_only_its_services(start_master: Any, tmp_path: Path) -> None:
    (tmp_path / "write").write_text(
        "# ops: everything; the web team: web-*; dashboards: read only\n"
        "ops-token\n"
        "web-token write web-*   # rotated 2026-12\n"
        "dash-token read\n"
    )
    master = start_master("--token-file", str(tmp_path / "write"), store="memory://")

    def put(ident: str, name: str, token: str) -> Any:
        body = registration(ident, name=name)
        return master.request(
            "PUT", f"/v1/services/{ident}", body, headers={"Authorization": f"Bearer {token}"}
        )

    assert put("web-1", "web-a", "web-token").status == 200
    refused = put("db-1", "db", "web-token")
    assert refused.status == 403 and refused.json()["error"]["code"] == "forbidden"
    assert "web-*" in refused.json()["error"]["message"]
    assert put("db-1", "db", "ops-token").status == 200
    stolen = put("db-1", "web-x", "web-token")  # renaming another's record into its scope
    assert stolen.status == 403
    removed = master.request(
        "DELETE", "/v1/services/db-1", headers={"Authorization": "Bearer web-token"}
    )
    assert removed.status == 403
    assert put("x", "web-x", "dash-token").status == 403  # read only
    consul = master.request("DELETE", "/v1/services/web-1", headers={"X-Consul-Token": "ops-token"})
    assert consul.status == 200  # the token as Consul clients send it
    log = "".join(m.log_path.read_text() for m in [master])
    assert "web-token" not in log and "ops-token" not in log  # no token is ever logged


def test_reads_take_the_token_as_consul_clients_send_it(start_master: Any, tmp_path: Path) -> None:
    (tmp_path / "write").write_text("w\n")
    (tmp_path / "read").write_text("r\n")
    master = start_master(
        "--token-file", str(tmp_path / "write"), "--read-token-file", str(tmp_path / "read")
    )
    path = "/v1/catalog/services"
    assert master.request("GET", path).status == 401
    assert master.request("GET", path, headers={"X-Consul-Token": "r"}).status == 200
    assert master.request("GET", f"{path}?token=r").status == 200
    assert master.request("GET", f"{path}?token=wrong").status == 401


def test_the_timeline_is_served_and_kept_across_a_restart(
    start_master: Any, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/history.db"
    master = start_master(store=store)
    body = registration("web-1", check={"url": "http://127.0.0.1:9/health", "interval": "1s"})
    assert master.request("PUT", "/v1/services/web-1", body).status == 200
    wait_until(  # port 9 refuses: unknown, then critical
        lambda: master.request("GET", "/v1/services/web-1").json()["status"] == "critical",
        timeout=5.0,
    )
    record = master.request("GET", "/v1/services/web-1").json()
    assert record["status_reason"].startswith("connection refused by 127.0.0.1:9")
    assert "history" not in record
    history = master.request("GET", "/v1/services/web-1/history").json()["history"]
    assert [(h["from"], h["to"]) for h in history] == [("unknown", "critical")]
    assert history[0]["at"] == record["status_changed_at"]
    master.stop()
    again = start_master(store=store)
    kept = again.request("GET", "/v1/services/web-1/history").json()["history"]
    assert kept[0] == history[0]
    assert again.request("GET", "/v1/services/nope/history").status == 404
