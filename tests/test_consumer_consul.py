"""Real Consul clients reading the catalog: py-consul 1.8.0 and the npm `consul` 2.0.1.

Each read test runs once per client through a small adapter (`Client`), so both are held
to the same answers: catalog, health with `passing`, `tag` and `filter`, blocking queries
(wake on a change of their service, not on another's), and a read token sent as
`X-Consul-Token`. What a user sees of an unsupported call (an agent write, KV, a session)
is each client's own error, so those tests are written per client.

The npm client is installed by `npm install` into tests/consumers/node/node_modules (once,
under a lock, whenever package.json changes) and driven by tests/consumers/node/client.js.
"""

from __future__ import annotations

import concurrent.futures
import json
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, Protocol

import consul
import consul.exceptions
import pytest

from tests import consumer_fixture, service_fixture
from tests.consumer_fixture import (
    READ_TOKEN,
    Catalog,
    locked,
    put_service,
    read_token_file,
    stamp_matches,
    wait_for_status,
)
from tests.service_fixture import NodeService, unused_port

start_catalog = consumer_fixture.start_catalog
node_service = service_fixture.node_service

NODE_DIR: Final = Path(__file__).resolve().parent / "consumers" / "node"
NODE_MODULES: Final = NODE_DIR / "node_modules"
NODE_STAMP: Final = NODE_MODULES / ".picoapi-installed"
NPM_TIMEOUT: Final = 300.0
CALL_TIMEOUT: Final = 30.0
NOT_SUPPORTED: Final = "read-only catalog: not supported"
# How long a blocking query must have been held before a change is made, to see it wait.
HELD: Final = 0.5
WAKE_WITHIN: Final = 5.0


# --- the two clients behind one adapter -------------------------------------------------


class Failed(Exception):
    """A call the client reported as failed: its status, and the message it showed."""

    def __init__(self, status: int | None, message: str, detail: str) -> None:
        super().__init__(f"{status} {message} {detail}")
        self.status, self.message, self.detail = status, message, detail


class Pending(Protocol):
    def done(self) -> bool: ...
    def result(self, timeout: float) -> tuple[int, Any]: ...


class Client(Protocol):
    name: str

    def call(self, endpoint: str, service: str | None = None, **opts: Any) -> tuple[int, Any]:
        """`endpoint`: services, service (catalog) or health; answers (index, body)."""
        ...

    def start(self, endpoint: str, service: str, **opts: Any) -> Pending: ...


class PyConsul:
    name = "py-consul"

    def __init__(self, catalog: Catalog, token: str | None) -> None:
        self.catalog, self.token = catalog, token
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)

    def _client(self) -> consul.Consul:
        return consul.Consul(host=self.catalog.host, port=self.catalog.port, token=self.token)

    def call(self, endpoint: str, service: str | None = None, **opts: Any) -> tuple[int, Any]:
        if "filter" in opts:
            opts["filter_expr"] = opts.pop("filter")
        client = self._client()
        try:
            if endpoint == "services":
                index, body = client.catalog.services(**opts)
            elif endpoint == "service":
                index, body = client.catalog.service(service, **opts)
            else:
                index, body = client.health.service(service, **opts)
        except consul.ConsulException as exc:
            raise Failed(_status_of(exc), type(exc).__name__, str(exc)) from exc
        finally:
            client.http.session.close()
        return int(index), body

    def start(self, endpoint: str, service: str, **opts: Any) -> Pending:
        future = self._pool.submit(self.call, endpoint, service, **opts)
        return _FuturePending(future)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _status_of(exc: Exception) -> int | None:
    """py-consul puts the status first in its messages ("400 ..."), or in the class."""
    text = str(exc).split(" ", 1)[0]
    if text.isdigit():
        return int(text)
    return {consul.exceptions.ACLDisabled: 401, consul.ACLPermissionDenied: 403}.get(type(exc))


class _FuturePending:
    def __init__(self, future: concurrent.futures.Future[tuple[int, Any]]) -> None:
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float) -> tuple[int, Any]:
        return self.future.result(timeout)


NODE_CALLS: Final = {
    "services": "catalog.service.list",
    "service": "catalog.service.nodes",
    "health": "health.service",
}


class NodeConsul:
    name = "node"

    def __init__(self, catalog: Catalog, token: str | None) -> None:
        self.catalog, self.token = catalog, token
        self.procs: list[NodeProcess] = []

    def spec(self, **more: Any) -> str:
        spec = {"host": self.catalog.host, "port": self.catalog.port, **more}
        if self.token:
            spec["token"] = self.token
        return json.dumps(spec)

    def steps(self, *steps: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Run these calls in one `node client.js`; their result lines."""
        spec = self.spec(steps=[{"call": call, "opts": opts} for call, opts in steps])
        done = subprocess.run(
            ["node", str(NODE_DIR / "client.js"), spec],
            capture_output=True,
            timeout=CALL_TIMEOUT,
            cwd=NODE_DIR,
            env=consumer_fixture.loopback_env(),
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
        return [line for line in lines if "started" not in line]

    def call(self, endpoint: str, service: str | None = None, **opts: Any) -> tuple[int, Any]:
        [answer] = self.steps((NODE_CALLS[endpoint], self._opts(service, opts)))
        return _node_answer(answer)

    def start(self, endpoint: str, service: str, **opts: Any) -> Pending:
        spec = self.spec(steps=[{"call": NODE_CALLS[endpoint], "opts": self._opts(service, opts)}])
        proc = NodeProcess(spec)
        self.procs.append(proc)
        proc.line(CALL_TIMEOUT)  # {"started": ...}: about to send it
        return proc

    def watch(self, endpoint: str, service: str, **opts: Any) -> NodeProcess:
        watch = {"call": NODE_CALLS[endpoint], "opts": self._opts(service, opts)}
        proc = NodeProcess(self.spec(watch=watch))
        self.procs.append(proc)
        return proc

    @staticmethod
    def _opts(service: str | None, opts: dict[str, Any]) -> dict[str, Any]:
        if "index" in opts:
            opts["index"] = str(opts["index"])
        return {**({"service": service} if service else {}), **opts}

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


def _node_answer(answer: dict[str, Any]) -> tuple[int, Any]:
    if "error" in answer:
        error = answer["error"]
        raise Failed(error["statusCode"], error["message"], json.dumps(error["body"]))
    return int(answer["index"]), answer["ok"]


class NodeProcess:
    """`node client.js` running a blocking call or a watch; killed by its pid at the end."""

    def __init__(self, spec: str) -> None:
        self.proc = subprocess.Popen(
            ["node", str(NODE_DIR / "client.js"), spec],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=NODE_DIR,
            env=consumer_fixture.loopback_env(),
        )
        self._buffer = b""
        self._answer: tuple[int, Any] | None = None

    def line(self, timeout: float) -> dict[str, Any] | None:
        """The next line it prints, or None if none comes within `timeout`."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = self.proc.stdout.read1(65536)
                if not chunk:
                    raise AssertionError(f"node exited ({self.proc.wait()}) mid-line")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        value: dict[str, Any] = json.loads(line)
        return value

    def done(self) -> bool:
        if self._answer is None:
            line = self.line(0)
            if line is not None:
                self._answer = _node_answer(line)
        return self._answer is not None

    def result(self, timeout: float) -> tuple[int, Any]:
        if self._answer is None:
            line = self.line(timeout)
            if line is None:
                raise TimeoutError(f"no answer within {timeout}s")
            self._answer = _node_answer(line)
        return self._answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="session")
def node_consul_installed() -> None:
    """npm install of package.json into tests/consumers/node, once per change of it."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the npm consul client (apt-get install npm)")
    wanted = (NODE_DIR / "package.json").read_text()
    with locked(consumer_fixture.CACHE / "node-consumer.lock"):
        if stamp_matches(NODE_STAMP, wanted):
            return
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock"],
            cwd=NODE_DIR,
            capture_output=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(
                "npm install of the consul client failed (offline?): "
                + done.stderr.decode(errors="replace")[-500:]
            )
        NODE_STAMP.write_text(wanted)


@pytest.fixture(params=["py-consul", "node"])
def make_client(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Client]]:
    """A factory of one kind of client for a catalog; each closed at the end."""
    # py-consul takes these from the environment over its arguments.
    for name in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    if request.param == "node":
        request.getfixturevalue("node_consul_installed")
    made: list[PyConsul | NodeConsul] = []

    def make(catalog: Catalog, token: str | None = None) -> Client:
        client = (
            PyConsul(catalog, token) if request.param == "py-consul" else NodeConsul(catalog, token)
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def ids(body: list[dict[str, Any]]) -> list[str]:
    """The service ids of a catalog or health answer, sorted."""
    return sorted(e["ServiceID"] if "ServiceID" in e else e["Service"]["ID"] for e in body)


# --- reads, the same for both clients ---------------------------------------------------


def test_catalog_services_service_tag_filter_and_dc(
    start_catalog: Callable[..., Catalog], make_client: Callable[..., Client]
) -> None:
    catalog = start_catalog()
    put_service(
        catalog.master, "web-1", "web", port=8081, tags=["primary", "v1"], meta={"team": "data"}
    )
    put_service(catalog.master, "web-2", "web", port=8082, tags=["v2"], meta={"team": "web"})
    put_service(catalog.master, "db-1", "db", port=5432)
    client = make_client(catalog)

    index, services = client.call("services")
    assert index >= 3
    assert services == {"db": [], "web": ["primary", "v1", "v2"]}
    _, services = client.call("services", filter='ServiceMeta.team == "data"')
    assert services == {"web": ["primary", "v1"]}

    _, entries = client.call("service", "web")
    assert ids(entries) == ["web-1", "web-2"]
    [one] = [e for e in entries if e["ServiceID"] == "web-1"]
    assert (one["ServiceName"], one["ServiceAddress"], one["ServicePort"]) == (
        "web",
        "127.0.0.1",
        8081,
    )
    assert one["ServiceTags"] == ["primary", "v1"] and one["ServiceMeta"] == {"team": "data"}
    assert one["CreateIndex"] == one["ModifyIndex"] < index  # its own, not the global one
    assert ids(client.call("service", "web", tag="primary")[1]) == ["web-1"]
    assert ids(client.call("service", "web", filter='ServiceMeta.team == "web"')[1]) == ["web-2"]
    assert ids(client.call("service", "web", filter='"v2" in ServiceTags')[1]) == ["web-2"]
    assert client.call("service", "nothing")[1] == []
    assert ids(client.call("service", "web", dc="dc1")[1]) == ["web-1", "web-2"]

    # What cannot be answered faithfully is an error the client raises, never ignored.
    with pytest.raises(Failed) as failed:
        client.call("service", "web", dc="dc2")
    assert failed.value.status == 400 and "'dc1'" in failed.value.detail
    with pytest.raises(Failed) as failed:
        client.call("service", "web", filter="Service.Nope == 1")
    assert failed.value.status == 400 and "filter" in failed.value.detail


def test_health_with_passing_tag_and_filter(
    start_catalog: Callable[..., Catalog],
    make_client: Callable[..., Client],
    node_service: NodeService,
) -> None:
    catalog = start_catalog()
    put_service(
        catalog.master,
        "web-1",
        "web",
        port=node_service.port,
        tags=["v1"],
        meta={"team": "data"},
        check_url=node_service.url("/ok/web-1"),
    )
    put_service(
        catalog.master,
        "web-2",
        "web",
        port=unused_port(),
        tags=["v2"],
        meta={"team": "web"},
        check_url=f"http://127.0.0.1:{unused_port()}/health",  # refused: critical
    )
    put_service(catalog.master, "web-3", "web", port=8083, tags=["v2"])  # no check: passing
    wait_for_status(catalog.master, {"web-1": "passing", "web-2": "critical"})
    client = make_client(catalog)

    _, entries = client.call("health", "web")
    assert ids(entries) == ["web-1", "web-2", "web-3"]
    checks = {e["Service"]["ID"]: [c["Status"] for c in e["Checks"]] for e in entries}
    assert checks == {"web-1": ["passing"], "web-2": ["critical"], "web-3": []}
    [web1] = [e for e in entries if e["Service"]["ID"] == "web-1"]
    assert web1["Service"]["Port"] == node_service.port
    assert web1["Node"]["Address"] == "127.0.0.1"
    assert web1["Checks"][0]["ServiceID"] == "web-1"

    assert ids(client.call("health", "web", passing=True)[1]) == ["web-1", "web-3"]
    assert ids(client.call("health", "web", tag="v2")[1]) == ["web-2", "web-3"]
    assert ids(client.call("health", "web", tag="v2", passing=True)[1]) == ["web-3"]
    assert ids(client.call("health", "web", filter='Service.Meta.team == "data"')[1]) == ["web-1"]
    assert ids(client.call("health", "web", filter="Checks.Status == critical")[1]) == ["web-2"]
    assert ids(
        client.call("health", "web", filter='Service.Tags contains "v2" and Checks is empty')[1]
    ) == ["web-3"]


@pytest.mark.parametrize("endpoint", ["service", "health"])
def test_a_blocking_query_wakes_on_its_service_and_not_on_another(
    start_catalog: Callable[..., Catalog], make_client: Callable[..., Client], endpoint: str
) -> None:
    catalog = start_catalog()
    put_service(catalog.master, "web-1", "web")
    put_service(catalog.master, "db-1", "db", port=5432)
    client = make_client(catalog)
    index, entries = client.call(endpoint, "web")
    assert ids(entries) == ["web-1"]

    # Wakes on a registration of its service.
    pending = client.start(endpoint, "web", index=index, wait="20s")
    time.sleep(HELD)
    assert not pending.done(), "a blocking query with a current index must wait"
    registered = time.monotonic()
    put_service(catalog.master, "web-2", "web", port=8082)
    woke_index, entries = pending.result(WAKE_WITHIN)
    assert time.monotonic() - registered < WAKE_WITHIN
    assert woke_index > index
    assert ids(entries) == ["web-1", "web-2"]

    # Does not wake for another service's changes, which move the catalog's index.
    index = woke_index
    pending = client.start(endpoint, "web", index=index, wait="2s")
    started = time.monotonic()
    put_service(catalog.master, "db-2", "db", port=5433)
    put_service(catalog.master, "db-1", "db", port=5432, tags=["edited"])
    catalog.master.request("DELETE", "/v1/services/db-2")
    assert client.call("services")[0] > index, "the other changes moved the catalog's index"
    time.sleep(HELD)
    assert not pending.done(), "woken by a change to another service"
    same_index, entries = pending.result(2 + WAKE_WITHIN)
    assert time.monotonic() - started >= 1.8, "answered before its wait ended"
    assert same_index == index
    assert ids(entries) == ["web-1", "web-2"]


def test_a_read_token_goes_as_x_consul_token(
    start_catalog: Callable[..., Catalog], make_client: Callable[..., Client], tmp_path: Path
) -> None:
    catalog = start_catalog("--read-token-file", str(read_token_file(tmp_path)))
    put_service(catalog.master, "web-1", "web", tags=["v1"])
    reader = make_client(catalog, READ_TOKEN)
    assert reader.call("services")[1] == {"web": ["v1"]}
    assert ids(reader.call("service", "web")[1]) == ["web-1"]
    assert ids(reader.call("health", "web", passing=True)[1]) == ["web-1"]
    if catalog.kind == "sidecar":
        # The sidecar reads with its own master.token, lent to its loopback callers: what
        # a caller sends is not passed on, so none is needed (a wrong one changes nothing).
        for token in (None, "not-the-token"):
            assert ids(make_client(catalog, token).call("health", "web")[1]) == ["web-1"]
        return
    for token in (None, "not-the-token"):
        with pytest.raises(Failed) as failed:
            make_client(catalog, token).call("service", "web")
        # Consul answers 403 for a missing or unknown token; we answer 401 (ask for one).
        assert failed.value.status in (401, 403), failed.value
        assert "token" in failed.value.detail


# --- the node client's own blocking loop: consul.watch ----------------------------------


def test_a_node_watch_changes_for_its_service_only(
    start_catalog: Callable[..., Catalog], node_consul_installed: None
) -> None:
    catalog = start_catalog()
    put_service(catalog.master, "web-1", "web")
    client = NodeConsul(catalog, None)
    try:
        watch = client.watch("health", "web", wait="1s")
        first = watch.line(CALL_TIMEOUT)
        assert first is not None and "change" in first, first
        assert ids(first["change"]) == ["web-1"]
        # Other services change, the catalog's index moves: no change event for web
        # (with one global index, every watch on the fleet would fire here).
        put_service(catalog.master, "db-1", "db", port=5432)
        put_service(catalog.master, "db-1", "db", port=5432, tags=["edited"])
        assert watch.line(2.5) is None, "a change event for another service's change"
        put_service(catalog.master, "web-2", "web", port=8082)
        second = watch.line(WAKE_WITHIN)
        assert second is not None and "change" in second, second
        assert ids(second["change"]) == ["web-1", "web-2"]
        assert int(second["index"]) > int(first["index"])
    finally:
        client.close()


# --- what each client shows of an unsupported call --------------------------------------


def test_py_consul_raises_read_only_for_writes_kv_and_sessions(
    start_catalog: Callable[..., Catalog], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    catalog = start_catalog()
    client = consul.Consul(host=catalog.host, port=catalog.port)
    calls: list[Callable[[], Any]] = [
        lambda: client.agent.service.register("web", service_id="web-1", port=8080),
        lambda: client.agent.service.deregister("web-1"),
        lambda: client.kv.get("config/web"),
        lambda: client.kv.put("config/web", "x"),
        lambda: client.session.create(),
        lambda: client.catalog.register("node-1", "10.0.0.1"),
        # Reads the view does not serve: an error too, not py-consul's "Missing index
        # header" for a bare 404 or a quiet None.
        lambda: client.catalog.nodes(),
        lambda: client.catalog.datacenters(),
        lambda: client.health.state("any"),
        lambda: client.health.checks("web"),
        lambda: client.status.peers(),
    ]
    for call in calls:
        with pytest.raises(consul.ConsulException) as raised:
            call()
        assert str(raised.value).startswith("501 "), raised.value
        assert NOT_SUPPORTED in str(raised.value)
    # Nothing was written behind the error.
    assert client.catalog.services()[1] == {}


def test_the_node_client_rejects_writes_kv_and_sessions_with_501(
    start_catalog: Callable[..., Catalog], node_consul_installed: None
) -> None:
    catalog = start_catalog()
    client = NodeConsul(catalog, None)
    answers = client.steps(
        ("agent.service.register", {"name": "web", "id": "web-1", "port": 8080}),
        ("kv.get", {"key": "config/web"}),
        ("kv.set", {"key": "config/web", "value": "x"}),
        ("session.create", {}),
        ("catalog.service.list", {}),
    )
    *refused, listed = answers
    for answer in refused:
        error = answer.get("error")
        assert error is not None, f"{answer['call']} answered {answer}"
        # The client's message is the status text ("not implemented"): it takes a body as
        # the message only when it is short text/plain. Ours is in the JSON body it keeps.
        assert error["statusCode"] == 501 and "not implemented" in error["message"]
        assert error["body"]["error"]["message"].startswith(NOT_SUPPORTED), error
    assert listed["ok"] == {}
