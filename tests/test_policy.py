"""The check-URL policy (master.policy) and checks that cannot run for a local reason."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from master.health import HealthScheduler
from master.metrics import Metrics
from master.model import KEEP, CheckResult, CheckSpec, DeregisterAfter, Registration, Status
from master.policy import CheckPolicy, parse_networks
from master.registry import Registry
from master.store.memory import MemoryStore
from tests.conftest import Master, wait_until

DEFAULT = CheckPolicy()


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("169.254.169.254", "a cloud metadata address"),
        ("169.254.170.2", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("::ffff:169.254.169.254", "a cloud metadata address"),  # IPv4 in IPv6 clothing
        ("127.0.0.1", None),
        ("10.1.2.3", None),
        ("2001:db8::1", None),
    ],
)
def test_the_default_policy_refuses_link_local_and_metadata(
    address: str, refused: str | None
) -> None:
    reason = DEFAULT.refusal(ipaddress.ip_address(address))
    assert (reason is None) == (refused is None)
    if refused is not None:
        assert refused in reason  # type: ignore[operator]


def test_an_allow_list_allows_only_its_networks() -> None:
    policy = CheckPolicy(parse_networks("10.0.0.0/8, fd00::/8"))
    assert policy.refusal(ipaddress.ip_address("10.9.9.9")) is None
    assert "outside --check-allow" in str(policy.refusal(ipaddress.ip_address("127.0.0.1")))
    explicit = CheckPolicy(parse_networks("169.254.0.0/16"))
    assert explicit.refusal(ipaddress.ip_address("169.254.169.254")) is None  # said so
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        parse_networks("10.0.0.0/33")


def test_user_info_is_refused_and_names_wait_for_the_check() -> None:
    assert "user info" in str(DEFAULT.url_refusal("http://user:pass@10.0.0.5/health"))
    assert "user info" in str(DEFAULT.url_refusal("http://user@10.0.0.5/health"))
    assert DEFAULT.url_refusal("http://[fe80::1]:80/health") is not None
    assert DEFAULT.url_refusal("http://metadata.internal/health") is None  # a name: at connect


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/",
        "http://admin:secret@127.0.0.1:9/health",
    ],
)
def test_a_refused_check_url_is_a_400_naming_the_field(start_master: Any, url: str) -> None:
    master: Master = start_master(store="memory://")
    body = {"name": "web", "address": "10.0.0.5", "port": 80, "check": {"url": url}}
    answer = master.request("PUT", "/v1/services/web-1", body)
    assert answer.status == 400, answer
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("check_url_refused", "check.url")
    assert master.request("GET", "/v1/services").json()["services"] == []
    picoapi = {"name": "Web", "host": "10.0.0.5", "port": 80, "healthcheck": {"url": url}}
    answer = master.request("PUT", "/register", picoapi)
    assert answer.status == 400 and answer.json()["error"]["field"] == "healthcheck.url"


class Target:
    """A loopback HTTP server that counts what reaches it."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def ok(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/{tail:.*}", ok)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    target = Target()
    await target.start()
    yield target
    await target.stop()


async def scheduled(policy: CheckPolicy, **kwargs: Any) -> tuple[Registry, HealthScheduler]:
    registry = Registry(MemoryStore())
    await registry.load()
    scheduler = HealthScheduler(registry, Metrics(), policy=policy, **kwargs)
    await scheduler.start()
    return registry, scheduler


async def status_soon(registry: Registry, ident: str, wanted: Status) -> None:
    for _ in range(100):
        record = registry.get(ident)
        if record is not None and record.status is wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{ident} never became {wanted}: {registry.get(ident)}")


async def test_a_name_that_resolves_to_a_refused_address_is_not_fetched(target: Target) -> None:
    """No way round by DNS: the address judged is the one connected to."""
    policy = CheckPolicy(parse_networks("10.0.0.0/8"))
    registry, scheduler = await scheduled(policy)
    try:
        url = f"http://localhost:{target.port}/secret"
        assert policy.url_refusal(url) is None  # a name passes registration...
        check = CheckSpec(url=url, interval=1.0, timeout=0.5)
        await registry.put(
            Registration(id="a", name="a", address="10.0.0.5", port=80, check=check), KEEP
        )
        await status_soon(registry, "a", Status.CRITICAL)  # ...and is refused at connect
        output = registry.get("a").last_check.output  # type: ignore[union-attr]
        assert "refused by the check policy" in output and "127.0.0.1" in output
        assert target.hits["/secret"] == 0
    finally:
        await scheduler.stop()


def _no_descriptors() -> aiohttp.ClientSession:
    """A session whose every connection fails as a process out of descriptors does."""

    class Exhausted(aiohttp.TCPConnector):
        async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
            raise aiohttp.ClientConnectorError(
                req.connection_key, OSError(errno.EMFILE, "Too many open files")
            )

    return aiohttp.ClientSession(connector=Exhausted())


async def test_a_check_that_cannot_run_here_moves_no_status(target: Target) -> None:
    """Out of descriptors is the master's fault: a healthy service stays passing, is not
    reaped, and the log says so once a second, not once a check."""
    registry, scheduler = await scheduled(CheckPolicy(), session_factory=_no_descriptors)
    metrics = scheduler._metrics
    try:
        check = CheckSpec(
            url=f"http://127.0.0.1:{target.port}/ok",
            interval=1.0,
            timeout=0.5,
            deregister_after=DeregisterAfter(1.0),
        )
        await registry.put(
            Registration(id="a", name="a", address="127.0.0.1", port=80, check=check), KEEP
        )
        await registry.record_check(
            "a", check.url, Status.PASSING, CheckResult(Status.PASSING, "ok", 1.0)
        )
        index = registry.index

        def not_run() -> float:
            return sum(
                sample.value
                for family in metrics.registry.collect()
                if family.name == "picoapi_checks_not_run"
                for sample in family.samples
                if sample.name.endswith("_total")
            )

        await asyncio.to_thread(wait_until, lambda: not_run() >= 3, 6.0)
        record = registry.get("a")
        assert record is not None and record.status is Status.PASSING  # not critical, not reaped
        assert registry.index == index  # nothing written
    finally:
        await scheduler.stop()


@pytest.mark.parametrize(
    "host",
    ["2852039166", "169.254.43518", "0251.0376.0251.0376", "169.254.169.254.", "0169.254.169.254"],
)
def test_an_address_in_another_spelling_is_refused(host: str) -> None:
    """aiohttp takes any host of digits and dots for an address and connects to it without
    a resolver (so without the policy's); the system reads `2852039166` as 169.254.169.254."""
    assert CheckPolicy().url_refusal(f"http://{host}/latest/meta-data/") is not None
    assert CheckPolicy(parse_networks("10.0.0.0/8")).url_refusal(f"http://{host}/") is not None


async def test_a_decimal_address_is_not_fetched(target: Target) -> None:
    policy = CheckPolicy(parse_networks("10.0.0.0/8"))
    registry, scheduler = await scheduled(policy)
    try:
        url = f"http://2130706433:{target.port}/secret"  # 127.0.0.1, outside 10.0.0.0/8
        check = CheckSpec(url=url, interval=1.0, timeout=0.5)
        await registry.put(
            Registration(id="a", name="a", address="10.0.0.5", port=80, check=check), KEEP
        )
        await status_soon(registry, "a", Status.CRITICAL)
        assert target.hits["/secret"] == 0
    finally:
        await scheduler.stop()
