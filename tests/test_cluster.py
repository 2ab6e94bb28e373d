"""Several masters on one etcd: one registry, one index, the checks shared, failover.

Real etcd (tests/etcd_fixture.py) on loopback, real masters as processes, and the Node.js
test service as the target of every check, counting the checks it gets, by path.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import etcd_fixture, service_fixture
from tests.conftest import Master, wait_until
from tests.etcd_fixture import EtcdCluster, gateway_post, start_etcd_cluster, store_url
from tests.service_fixture import NodeService
from tests.tcp_proxy import TcpProxy

etcd = etcd_fixture.etcd  # bound, not imported: no F811 on uses
etcd_cluster = etcd_fixture.etcd_cluster
node_service = service_fixture.node_service

TTL = 3.0  # --member-ttl for these tests: failover well within a test's time
INTERVAL = 1.0


def registration(ident: str, check_url: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "svc", "address": "127.0.0.1", "port": 8080, **fields}
    if check_url is not None:
        body["check"] = {"url": check_url, "interval": f"{INTERVAL:g}s", "timeout": "500ms"}
    return body


def index(master: Master) -> int:
    return int(master.request("GET", "/healthz").json()["index"])


def listed(master: Master) -> dict[str, Any]:
    return {s["id"]: s for s in master.request("GET", "/v1/services").json()["services"]}


def checks_run(master: Master) -> float:
    text = master.request("GET", "/metrics").body.decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("picoapi_checks_total{")
    )


def etcd_revision(cluster: EtcdCluster) -> int:
    answer = gateway_post(cluster.any_url(), "/v3/kv/range", {"key": "AA=="})
    return int(answer["header"]["revision"])


@pytest.fixture
def masters(start_master: Any) -> Callable[..., list[Master]]:
    def start(url: str, count: int = 3) -> list[Master]:
        return [start_master("--member-ttl", f"{TTL:g}s", store=url) for _ in range(count)]

    return start


def test_a_write_through_one_master_is_seen_through_the_others_at_one_index(
    etcd: EtcdCluster, masters: Callable[..., list[Master]]
) -> None:
    first, second, third = masters(store_url(etcd))
    assert first.request("PUT", "/v1/services/web-1", registration("web-1")).status == 200
    started = time.monotonic()
    for other in (second, third):
        wait_until(lambda o=other: "web-1" in listed(o), timeout=1.0, message="seen elsewhere")
    assert time.monotonic() - started < 1.0
    assert index(first) == index(second) == index(third)
    record = second.request("GET", "/v1/services/web-1").json()
    assert record["create_index"] == record["modify_index"] == index(first)

    # A blocking query on one master is woken by a write through another.
    async def watch_and_write() -> tuple[int, float]:
        at = index(third)
        async with aiohttp.ClientSession() as session:
            query = session.get(f"{third.url}/v1/services?index={at}&wait=20s")
            waiting = asyncio.ensure_future(query)
            await asyncio.sleep(0.3)
            assert not waiting.done()
            sent = time.monotonic()
            async with session.put(
                f"{second.url}/v1/services/web-2", json=registration("web-2")
            ) as answer:
                assert answer.status == 200
            async with await waiting as woken:
                return int(woken.headers["X-Picoapi-Index"]), time.monotonic() - sent

    woken_at, took = asyncio.run(watch_and_write())
    assert woken_at == index(second) and took < 1.0


def test_each_service_is_checked_by_one_master_and_taken_over_when_one_dies(
    etcd: EtcdCluster, masters: Callable[..., list[Master]], node_service: NodeService
) -> None:
    group = masters(store_url(etcd))
    services = [f"svc-{n}" for n in range(24)]
    for n, ident in enumerate(services):
        check = node_service.url(f"/ok/{ident}")
        answer = group[n % 3].request("PUT", f"/v1/services/{ident}", registration(ident, check))
        assert answer.status == 200
    wait_until(  # a new service is checked within about a second
        lambda: all(node_service.hits(f"/ok/{s}") >= 1 for s in services), timeout=3.0
    )

    def counts() -> dict[str, int]:
        stats = node_service.stats()
        return {s: stats.get(f"/ok/{s}", 0) for s in services}

    before = counts()
    time.sleep(4.0)
    after = counts()
    # One master checking at 1/s gives about 4; two would give about 8.
    assert all(2 <= after[s] - before[s] <= 6 for s in services), (before, after)
    assert all(checks_run(m) > 0 for m in group), "every master checks its share"

    # SIGKILL one master: its share waits at most TTL + one interval.
    last_seen: dict[str, float] = {}
    seen = counts()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # when was each last checked before the kill?
        now_counts, now = counts(), time.monotonic()
        for s in services:
            if now_counts[s] != seen[s]:
                last_seen[s] = now
        seen = now_counts
        time.sleep(0.1)
    group[0].kill()
    killed_at = time.monotonic()
    longest: dict[str, float] = {}
    watch_until = killed_at + TTL + INTERVAL + 4.0
    while time.monotonic() < watch_until:
        now_counts, now = counts(), time.monotonic()
        for s in services:
            if now_counts[s] != seen[s]:
                gap = now - last_seen.get(s, killed_at)
                longest[s] = max(longest.get(s, 0.0), gap)
                last_seen[s] = now
        seen = now_counts
        time.sleep(0.1)
    for s in services:  # and a service not checked since: its gap runs to the end
        longest[s] = max(longest.get(s, 0.0), time.monotonic() - last_seen.get(s, killed_at))
    worst = max(longest.values())
    assert worst <= TTL + INTERVAL + 1.5, sorted(longest.items(), key=lambda kv: -kv[1])[:5]

    # Steady again: one check a second each, no service checked twice over.
    before = counts()
    time.sleep(3.0)
    after = counts()
    assert all(1 <= after[s] - before[s] <= 5 for s in services), (before, after)


def test_a_steady_registry_writes_nothing_to_etcd(
    etcd: EtcdCluster, masters: Callable[..., list[Master]], node_service: NodeService
) -> None:
    group = masters(store_url(etcd))
    for n in range(12):
        ident = f"svc-{n}"
        check = node_service.url(f"/ok/{ident}")
        group[n % 3].request("PUT", f"/v1/services/{ident}", registration(ident, check))
    wait_until(
        lambda: all(r["status"] == "passing" for r in listed(group[0]).values()), timeout=5.0
    )
    revision = etcd_revision(etcd)
    time.sleep(4.0)  # four rounds of twelve checks, three masters holding their leases
    assert etcd_revision(etcd) == revision
    node_service.set_health(503)  # /ok/ paths are not it: nothing changes for them
    assert etcd_revision(etcd) == revision


def test_acknowledged_writes_survive_a_master_sigkill_and_an_etcd_restart(
    etcd: EtcdCluster, masters: Callable[..., list[Master]]
) -> None:
    writer, reader = masters(store_url(etcd), 2)

    async def burst() -> list[str]:
        acked: list[str] = []
        async with aiohttp.ClientSession() as session:

            async def one(n: int) -> None:
                ident = f"burst-{n}"
                async with session.put(
                    f"{writer.url}/v1/services/{ident}", json=registration(ident)
                ) as answer:
                    if answer.status == 200:
                        acked.append(ident)

            await asyncio.gather(*(one(n) for n in range(200)))
        return acked

    acked = asyncio.run(burst())
    writer.kill()  # right after the last 200
    assert len(acked) == 200
    wait_until(lambda: set(acked) <= set(listed(reader)), timeout=2.0)
    etcd.stop_all()
    etcd.start_all()
    wait_until(  # the reader's watch resumes by itself
        lambda: reader.request("GET", "/healthz").json()["status"] == "ok", timeout=15.0
    )
    assert set(acked) <= set(listed(reader))
    assert reader.request("PUT", "/v1/services/after", registration("after")).status == 200
    late = masters(store_url(etcd), 1)[0]
    assert set(acked) | {"after"} <= set(listed(late))


def test_one_etcd_member_of_three_lost_writes_go_on(
    etcd_cluster: EtcdCluster, masters: Callable[..., list[Master]]
) -> None:
    first, second = masters(store_url(etcd_cluster), 2)
    assert first.request("PUT", "/v1/services/a", registration("a")).status == 200
    leader = etcd_cluster.wait_leader()
    position = next(
        i
        for i, member in enumerate(etcd_cluster.members)
        if int(member.status()["header"]["member_id"]) == leader
    )
    etcd_cluster.kill(position)  # the worst one to lose: an election follows
    for n in range(20):
        target = (first, second)[n % 2]
        answer = target.request("PUT", f"/v1/services/after-{n}", registration(f"after-{n}"))
        assert answer.status == 200, answer
    wait_until(lambda: index(first) == index(second), timeout=2.0)
    assert {f"after-{n}" for n in range(20)} <= set(listed(first))


def test_all_of_etcd_stopped_reads_answer_writes_503_and_all_recover(
    etcd: EtcdCluster, masters: Callable[..., list[Master]]
) -> None:
    group = masters(store_url(etcd), 2)
    assert group[0].request("PUT", "/v1/services/a", registration("a")).status == 200
    wait_until(lambda: "a" in listed(group[1]), timeout=2.0)
    etcd.stop_all()
    for master in group:
        wait_until(
            lambda m=master: m.request("GET", "/healthz").json()["status"] == "degraded",
            timeout=15.0,
        )
        read = master.request("GET", "/v1/services")
        assert read.status == 200 and "a" in {s["id"] for s in read.json()["services"]}
        assert float(read.headers["x-picoapi-stale"]) >= 0
        assert master.request("GET", "/healthz?ready").status == 503
        refused = master.request("PUT", "/v1/services/b", registration("b"))
        assert refused.status == 503, refused
        assert refused.json()["error"]["code"] == "store_unavailable"
    etcd.start_all()
    for master in group:
        wait_until(
            lambda m=master: m.request("GET", "/healthz").json()["status"] == "ok", timeout=15.0
        )
        assert master.proc.poll() is None  # nobody exited
    assert group[1].request("PUT", "/v1/services/b", registration("b")).status == 200
    wait_until(lambda: "b" in listed(group[0]), timeout=2.0)
    assert "x-picoapi-stale" not in group[0].request("GET", "/v1/services").headers


def test_a_master_cut_off_while_etcd_compacts_catches_up(
    etcd: EtcdCluster, masters: Callable[..., list[Master]]
) -> None:
    port = etcd.members[0].client_port
    with TcpProxy(("127.0.0.1", port)) as proxy:
        near = masters(store_url(etcd), 1)[0]
        far = masters(f"etcd://127.0.0.1:{proxy.port}", 1)[0]
        assert near.request("PUT", "/v1/services/gone", registration("gone")).status == 200
        wait_until(lambda: "gone" in listed(far), timeout=2.0)
        proxy.cut()
        wait_until(
            lambda: far.request("GET", "/healthz").json()["status"] == "degraded", timeout=70.0
        )
        for n in range(30):
            near.request("PUT", f"/v1/services/n-{n}", registration(f"n-{n}"))
        near.request("DELETE", "/v1/services/gone")
        etcd.compact(etcd_revision(etcd))
        proxy.restore()
        wait_until(lambda: listed(far).keys() == listed(near).keys(), timeout=15.0)
        wait_until(lambda: index(far) == index(near), timeout=5.0)
        reloaded = [e for e in far.events() if e.get("event") == "etcd_reloaded"]
        assert reloaded, "the master listed everything again after the compaction"


def test_stopping_a_master_hands_its_share_on_at_once(
    tmp_path: Path, masters: Callable[..., list[Master]], node_service: NodeService
) -> None:
    """A stopped master revokes its lease: no TTL to wait."""
    with start_etcd_cluster(tmp_path / "etcd", 1) as cluster:
        first, second = masters(store_url(cluster), 2)
        for n in range(8):
            ident = f"svc-{n}"
            first.request(
                "PUT",
                f"/v1/services/{ident}",
                registration(ident, node_service.url(f"/ok/{ident}")),
            )
        first.signal(signal.SIGTERM)
        assert first.wait(10) == 0
        left = time.monotonic()
        wait_until(
            lambda: second.request("GET", "/healthz").json()["cluster"]["members"] == 1,
            timeout=TTL,
        )
        assert time.monotonic() - left < TTL / 2
