"""End to end: the real master, the real sidecar and a real Node.js service, as processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from master.model import canonical_document
from tests.conftest import BIN, Daemon, Master, http_request, wait_until
from tests.netns import Namespaces, NetnsError, ip_binary, ns_http
from tests.service_fixture import NodeService, start_node_service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def service() -> Iterator[NodeService]:
    with start_node_service() as node:
        yield node


class Sidecar(Daemon):
    url: str
    config_path: Path

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = http_request("GET", f"{self.url}/status").json()
        return answer


def sidecar_yaml(
    service: NodeService,
    master_url: str,
    port: int,
    *,
    tags: str = "[a, b]",
    resync: str = "30s",
    extra: str = "",
) -> str:
    return f"""\
service:
  name: node-api
  id: node-api-1
  address: 127.0.0.1
  port: {service.port}
  tags: {tags}
  meta: {{team: data}}
  openapi: /openapi.json
check:
  http: /healthz
  interval: 1s
  timeout: 500ms
  deregister_after: 0
master:
  url: {master_url}
sidecar:
  listen: 127.0.0.1:{port}
  advertise: 127.0.0.1:{port}
  resync: {resync}
{extra}"""


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    started: list[Sidecar] = []

    def start(yaml_text: str, port: int, name: str = "service.yaml") -> Sidecar:
        path = tmp_path / name
        path.write_text(yaml_text)
        sidecar = Sidecar(
            [str(BIN / "picoapi-sidecar"), "--log-format", "json", "run", str(path)],
            tmp_path / f"sidecar-{len(started)}.log",
        )
        sidecar.url = f"http://127.0.0.1:{port}"
        sidecar.config_path = path
        started.append(sidecar)
        sidecar.wait_for_event("sidecar_started")
        return sidecar

    yield start
    for sidecar in started:
        sidecar.stop()


def record(master: Master, ident: str = "node-api-1") -> dict[str, Any] | None:
    answer = master.request("GET", f"/v1/services/{ident}")
    return answer.json() if answer.status == 200 else None


def test_registers_with_tags_document_and_health(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    master = start_master()
    port = free_port()
    sidecar = start_sidecar(sidecar_yaml(service, master.url, port), port)
    got = wait_until(
        lambda: (r := record(master)) and r["status"] == "passing" and r,
        message="registered and passing",
    )
    assert got["tags"] == ["a", "b"] and got["meta"] == {"team": "data"}
    assert got["port"] == service.port and got["address"] == "127.0.0.1"
    assert got["check"]["url"] == f"http://127.0.0.1:{port}/health"
    doc = master.request("GET", "/v1/services/node-api-1/openapi")
    assert doc.status == 200 and doc.json()["openapi"].startswith("3.")
    # health transitions reach the master through the sidecar's /health
    service.set_health(503, "db down")
    wait_until(lambda: record(master)["status"] == "critical", message="critical")  # type: ignore[index]
    assert "db down" in record(master)["last_check"]["output"]  # type: ignore[index]
    service.set_health(429, "busy")
    wait_until(lambda: record(master)["status"] == "warning", message="warning")  # type: ignore[index]
    service.set_health(200)
    wait_until(lambda: record(master)["status"] == "passing", message="passing")  # type: ignore[index]
    health = http_request("GET", f"{sidecar.url}/health")
    assert health.status == 200 and health.json()["check"] == "http"
    # the service dies: critical at the master, the sidecar keeps running
    service.kill()
    wait_until(lambda: record(master)["status"] == "critical", message="critical when killed")  # type: ignore[index]
    assert http_request("GET", f"{sidecar.url}/health").status == 503
    assert sidecar.proc.poll() is None


def test_master_down_at_start_then_up(
    start_master: Any, start_sidecar: Any, service: NodeService, tmp_path: Path
) -> None:
    master_port = free_port()
    port = free_port()
    sidecar = start_sidecar(sidecar_yaml(service, f"http://127.0.0.1:{master_port}", port), port)
    sidecar.wait_for_event("sync_failed")
    assert http_request("GET", f"{sidecar.url}/health").status == 200  # still serving
    assert sidecar.status()["registered"] is False
    master = start_master("--listen", f"127.0.0.1:{master_port}")
    # backoff is capped and jittered: the first attempts come quickly
    wait_until(lambda: record(master), timeout=15, message="registered once the master is up")
    assert sidecar.proc.poll() is None


def test_master_restarted_with_empty_store_gets_it_back(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    master_port = free_port()
    master = start_master("--listen", f"127.0.0.1:{master_port}", store="memory://")
    port = free_port()
    start_sidecar(sidecar_yaml(service, master.url, port, resync="2s"), port)
    wait_until(lambda: record(master), message="registered")
    master.stop()
    again = start_master("--listen", f"127.0.0.1:{master_port}", store="memory://")
    assert record(again) is None
    # The re-assertion, and at once the document the master turns out to lack (two PUTs).
    got = wait_until(
        lambda: (r := record(again)) and r["openapi_sha256"] and r,
        timeout=8,
        message="back within one resync, with the document",
    )
    assert got["openapi_sha256"], "the document is re-sent to a master that lost it"


def test_resync_changes_nothing_at_the_master(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    master = start_master()
    port = free_port()
    sidecar = start_sidecar(sidecar_yaml(service, master.url, port, resync="1s"), port)
    first = wait_until(lambda: (r := record(master)) and r["status"] == "passing" and r)
    index = master.request("GET", "/v1/services").headers["x-picoapi-index"]
    syncs = sidecar.status()["syncs"]
    time.sleep(3.5)  # three resyncs and three checks
    assert sidecar.status()["syncs"] >= syncs + 2, "the resyncs ran"
    assert master.request("GET", "/v1/services").headers["x-picoapi-index"] == index
    assert record(master)["updated_at"] == first["updated_at"]  # type: ignore[index]


def test_document_change_reaches_the_master(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    master = start_master()
    port = free_port()
    start_sidecar(sidecar_yaml(service, master.url, port, resync="1s"), port)
    first = wait_until(lambda: (r := record(master)) and r["openapi_sha256"])
    new_doc = {"openapi": "3.0.3", "info": {"title": "v2", "version": "2"}, "paths": {"/x": {}}}
    service.set_openapi(new_doc)
    wait_until(lambda: record(master)["openapi_sha256"] != first, timeout=6)  # type: ignore[index]
    assert master.request("GET", "/v1/services/node-api-1/openapi").json() == new_doc


def _edit_in_place(path: Path, text: str) -> None:
    with open(path, "r+") as handle:
        handle.seek(0)
        handle.write(text)
        handle.truncate()


def _atomic_rename(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _symlink_swap(path: Path, text: str) -> None:
    """What the kubelet does for a ConfigMap: a new ..data dir, then swap the ..data link."""
    root = path.parent
    new_dir = root / f"..{time.time_ns()}"
    new_dir.mkdir()
    (new_dir / "service.yaml").write_text(text)
    link = root / "..data_tmp"
    link.symlink_to(new_dir.name)
    os.replace(link, root / "..data")


@pytest.mark.parametrize("edit", ["in_place", "rename", "symlink_swap", "sighup"])
def test_tag_edit_reaches_the_master(
    start_master: Any, start_sidecar: Any, service: NodeService, tmp_path: Path, edit: str
) -> None:
    master = start_master()
    port = free_port()
    text = sidecar_yaml(service, master.url, port)
    if edit == "symlink_swap":
        config_dir = tmp_path / "configmap"
        config_dir.mkdir()
        first = config_dir / "..1"
        first.mkdir()
        (first / "service.yaml").write_text(text)
        (config_dir / "..data").symlink_to("..1")
        (config_dir / "service.yaml").symlink_to("..data/service.yaml")
        sidecar = Sidecar(
            [
                str(BIN / "picoapi-sidecar"),
                "--log-format",
                "json",
                "run",
                str(config_dir / "service.yaml"),
            ],
            tmp_path / "sidecar-cm.log",
        )
        sidecar.url = f"http://127.0.0.1:{port}"
        try:
            sidecar.wait_for_event("sidecar_started")
            _check_edit(master, sidecar, config_dir / "service.yaml", text, _symlink_swap)
        finally:
            sidecar.stop()
        return
    sidecar = start_sidecar(text, port)
    if edit == "sighup":

        def write_and_hup(path: Path, new: str) -> None:
            _edit_in_place(path, new)
            sidecar.signal(signal.SIGHUP)

        _check_edit(master, sidecar, sidecar.config_path, text, write_and_hup)
    else:
        writer = _edit_in_place if edit == "in_place" else _atomic_rename
        _check_edit(master, sidecar, sidecar.config_path, text, writer)


def _check_edit(
    master: Master, sidecar: Sidecar, path: Path, text: str, write: Callable[[Path, str], None]
) -> None:
    wait_until(lambda: (r := record(master)) and r["status"] == "passing")
    index = int(master.request("GET", "/v1/services").headers["x-picoapi-index"])
    started = time.monotonic()
    write(path, text.replace("tags: [a, b]", "tags: [a, b, edited]"))
    wait_until(
        lambda: record(master)["tags"] == ["a", "b", "edited"],
        timeout=2.0,  # type: ignore[index]
        message="tag edit at the master within 2 s",
    )
    elapsed = time.monotonic() - started
    after = record(master)
    assert after is not None and after["status"] == "passing", "status kept across a reload"
    # one change for watchers, not a remove and re-add
    assert int(master.request("GET", "/v1/services").headers["x-picoapi-index"]) == index + 1
    sidecar.wait_for_event("config_reloaded")
    assert elapsed < 2.0


def test_bad_edit_keeps_last_good_config(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    master = start_master()
    port = free_port()
    text = sidecar_yaml(service, master.url, port)
    sidecar = start_sidecar(text, port)
    wait_until(lambda: record(master))
    _edit_in_place(sidecar.config_path, text.replace(f"port: {service.port}", "port: eighty"))
    rejected = sidecar.wait_for_event("config_rejected")
    assert any("service.port" in line and ":5:" in line for line in rejected["errors"])
    assert sidecar.status()["config_error"]
    time.sleep(0.5)
    assert sidecar.proc.poll() is None
    assert record(master)["port"] == service.port  # type: ignore[index]
    # a good edit after the bad one is taken
    _edit_in_place(sidecar.config_path, text.replace("tags: [a, b]", "tags: [fixed]"))
    wait_until(lambda: record(master)["tags"] == ["fixed"], timeout=3)  # type: ignore[index]


def test_sigterm_deregisters_and_exits_zero(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    master = start_master()
    port = free_port()
    sidecar = start_sidecar(sidecar_yaml(service, master.url, port), port)
    wait_until(lambda: record(master))
    started = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(10) == 0
    assert time.monotonic() - started < 5
    assert record(master) is None
    assert "deregistered" in [e["event"] for e in sidecar.events()]


def test_drain_deregisters_and_stays_away(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    master = start_master()
    port = free_port()
    sidecar = start_sidecar(sidecar_yaml(service, master.url, port, resync="1s"), port)
    wait_until(lambda: record(master))
    answer = http_request("POST", f"{sidecar.url}/drain")
    assert answer.status == 200 and answer.json()["drained"] is True
    assert record(master) is None
    time.sleep(2.5)  # two resyncs would have re-registered it
    assert record(master) is None
    assert sidecar.status()["drained"] is True
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(10) == 0


class Watcher:
    """A blocking-query client of the master, in a thread: every state of `ident` it is
    woken with (its status, or None once gone), with the time it saw it."""

    def __init__(self, master: Master, ident: str = "node-api-1") -> None:
        self.master, self.ident = master, ident
        self.seen: list[tuple[float, str | None]] = []
        self.passing_while_draining: list[Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        index = 0
        deadline = time.monotonic() + 30  # bounded, whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            answer = self.master.request("GET", f"/v1/services?index={index}&wait=2s")
            index = int(answer.headers["x-picoapi-index"])
            mine = [r for r in answer.json()["services"] if r["id"] == self.ident]
            status = mine[0]["status"] if mine else None
            if not self.seen or self.seen[-1][1] != status:
                self.seen.append((time.monotonic(), status))
                if status == "draining" and self.passing_while_draining is None:
                    consul = self.master.request("GET", "/v1/health/service/node-api?passing")
                    self.passing_while_draining = consul.json()

    def first(self, status: str | None) -> float:
        return next(at for at, seen in self.seen if seen == status)


def test_sigterm_with_a_drain_grace_reports_draining_then_deregisters(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    """sidecar.drain_grace 2s: on SIGTERM a watcher sees `draining` (and the Consul view
    no longer lists it as passing), the record stays that long, then goes; exit 0 within
    the grace plus the 5 s budget."""
    master = start_master()
    port = free_port()
    grace = 2.0
    text = sidecar_yaml(service, master.url, port, extra=f"  drain_grace: {grace:g}s\n")
    sidecar = start_sidecar(text, port)
    wait_until(lambda: (r := record(master)) and r["status"] == "passing", message="passing")
    with Watcher(master) as watcher:
        wait_until(lambda: watcher.seen, message="the watcher's first answer")
        signalled = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait(grace + 5) == 0
        exited = time.monotonic()
        wait_until(lambda: watcher.seen[-1][1] is None, message="the watcher sees it go")
    statuses = [status for _, status in watcher.seen]
    assert statuses == ["passing", "draining", None], watcher.seen
    assert watcher.passing_while_draining == []  # Consul's ?passing drops a draining one
    assert watcher.first(None) - watcher.first("draining") >= grace - 0.3, watcher.seen
    assert grace - 0.3 <= exited - signalled < grace + 5
    events = [e["event"] for e in sidecar.events()]
    assert events.index("draining") < events.index("deregistered")


def test_post_drain_with_a_grace_answers_once_the_record_is_gone(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    """A preStop hook's POST /drain returns after the grace and the DELETE, so the kubelet
    stops the application only once nobody is sent to it; the sidecar stays away."""
    master = start_master()
    port = free_port()
    text = sidecar_yaml(service, master.url, port, resync="1s", extra="  drain_grace: 1500ms\n")
    sidecar = start_sidecar(text, port)
    wait_until(lambda: (r := record(master)) and r["status"] == "passing", message="passing")
    asked = time.monotonic()
    answer = http_request("POST", f"{sidecar.url}/drain", timeout=10)
    assert answer.status == 200 and answer.json()["drained"] is True, answer
    assert time.monotonic() - asked >= 1.2
    assert record(master) is None
    time.sleep(2.5)  # resyncs at 1 s would have re-registered it
    assert record(master) is None
    status = sidecar.status()
    assert status["drained"] is True and status["draining_since"].endswith("Z")
    started = time.monotonic()
    sidecar.signal(signal.SIGTERM)  # drained already: no second grace
    assert sidecar.wait(10) == 0
    assert time.monotonic() - started < 5


def test_a_second_signal_cuts_the_drain_grace_short(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    master = start_master()
    port = free_port()
    text = sidecar_yaml(service, master.url, port, extra="  drain_grace: 60s\n")
    sidecar = start_sidecar(text, port)
    wait_until(lambda: record(master), message="registered")
    sidecar.signal(signal.SIGTERM)
    wait_until(lambda: (r := record(master)) and r["status"] == "draining", message="draining")
    started = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(10) == 0
    assert time.monotonic() - started < 2.5
    assert record(master) is None


def test_sidecar_surface(start_master: Any, start_sidecar: Any, service: NodeService) -> None:
    master = start_master()
    port = free_port()
    sidecar = start_sidecar(sidecar_yaml(service, master.url, port), port)
    held = wait_until(lambda: (r := record(master)) and r["openapi_sha256"])
    status = sidecar.status()
    assert status["registered"] is True and status["master_url"] == master.url
    assert status["openapi_sha256"] == held, "both sides hash the same bytes"
    assert status["registration"]["tags"] == ["a", "b"]
    doc = http_request("GET", f"{sidecar.url}/openapi.json")
    assert doc.status == 200 and "openapi" in doc.json()
    assert doc.body == canonical_document(doc.json()), "served as the canonical bytes sent"
    metrics = http_request("GET", f"{sidecar.url}/metrics").body.decode()
    assert "picoapi_sidecar_registered 1.0" in metrics
    assert "picoapi_sidecar_sync_consecutive_failures 0.0" in metrics
    assert "picoapi_sidecar_sync_failures_total 0.0" in metrics
    assert "# TYPE picoapi_sidecar_syncs_total counter" in metrics
    syncs = next(
        line for line in metrics.splitlines() if line.startswith("picoapi_sidecar_syncs_t")
    )
    assert float(syncs.split()[1]) >= 1
    assert "process_resident_memory_bytes" in metrics


def test_master_urls_are_tried_in_order(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    master = start_master()
    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    text = sidecar_yaml(service, "PLACEHOLDER", port).replace(
        "  url: PLACEHOLDER", f"  url: [{dead}, {master.url}]"
    )
    sidecar = start_sidecar(text, port)
    wait_until(lambda: record(master), message="registered through the second url")
    assert sidecar.status()["master_url"] == master.url


# --- a second signal ---------------------------------------------------------------------


class SlowToDelete:
    """A master that takes PUTs at once and answers a DELETE only after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.puts: list[float] = []
        self.deletes: list[float] = []
        self.url = ""

    async def put(self, request: web.Request) -> web.Response:
        await request.read()
        self.puts.append(time.monotonic())
        return web.json_response({"id": request.match_info["id"], "openapi_sha256": None})

    async def delete(self, request: web.Request) -> web.Response:
        self.deletes.append(time.monotonic())
        await asyncio.sleep(self.delay)
        return web.json_response({})


@pytest.fixture
async def slow_master() -> AsyncIterator[SlowToDelete]:
    master = SlowToDelete(delay=2.5)
    app = web.Application()
    app.router.add_put("/v1/services/{id}", master.put)
    app.router.add_delete("/v1/services/{id}", master.delete)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    master.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield master
    await runner.cleanup()


async def _until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("gap", [0.05, 0.5])
async def test_a_second_sigterm_shortens_the_wait_but_still_deregisters(
    slow_master: SlowToDelete, tmp_path: Path, gap: float
) -> None:
    """Without the second signal the DELETE would get its answer (2.5 s, within the 3 s
    budget); with it, the wait for that answer ends 1 s after the second signal. Either
    way the DELETE is sent, the session closed and the exit status 0."""
    port = free_port()
    config = tmp_path / "service.yaml"
    config.write_text(
        f"service:\n  name: web\n  id: web-1\n  address: 127.0.0.1\n  port: {free_port()}\n"
        f"master:\n  url: {slow_master.url}\n"
        f"sidecar:\n  listen: 127.0.0.1:{port}\n"
    )
    log_path = tmp_path / "sidecar.log"
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "picoapi-sidecar"), "--log-format", "json", "run", str(config),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:
        await _until(lambda: slow_master.puts)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(gap)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=5.0)
        elapsed = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log_path.read_text()
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    names = [event["event"] for event in events]
    assert code == 0, text
    assert len(slow_master.deletes) == 1, "the DELETE was sent"
    assert gap + 0.9 < elapsed < gap + 1.6, f"stopped after {elapsed:.2f}s"
    assert "Traceback" not in text
    assert names.count("shutdown_requested") == 1 and names.count("shutdown_hurried") == 1
    cut = [e for e in events if e["event"] == "stop_step_cut_short"]
    assert [e["step"] for e in cut] == ["deregister"]
    assert names[-1] == "sidecar_stopped" and events[-1]["exit_code"] == 0


# --- ids, the master's view, tokens ------------------------------------------------------------


def test_an_edited_service_id_deregisters_the_old_one(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    master = start_master()
    port = free_port()
    text = sidecar_yaml(service, master.url, port)
    sidecar = start_sidecar(text, port)
    first = wait_until(lambda: record(master), message="registered")
    assert first["instance"] == sidecar.status()["instance"]
    assert sidecar.status()["instance"] == f"{socket.gethostname()}:{port}"
    _edit_in_place(sidecar.config_path, text.replace("id: node-api-1", "id: node-api-2"))
    wait_until(
        lambda: record(master, "node-api-2") and record(master, "node-api-1") is None,
        timeout=3,
        message="the new id registered, the old one gone",
    )
    gone = sidecar.wait_for_event("deregistered", service_id="node-api-1")
    assert gone["because"] == "service.id changed"
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(10) == 0
    assert record(master, "node-api-2") is None


def test_status_says_at_once_when_the_master_is_away_and_stops_checking(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    """The master SIGKILLed: the next resync fails and /status says unreachable; three
    check intervals (1 s) with no check from it and /status says it is not checking."""
    master = start_master()
    port = free_port()
    sidecar = start_sidecar(sidecar_yaml(service, master.url, port, resync="1s"), port)
    up = wait_until(
        lambda: (s := sidecar.status())["master"]["checking"] and s,
        message="the master checking the sidecar",
    )
    assert up["master"]["reachable"] is True and up["master"]["error"] is None
    master.kill()
    killed = time.monotonic()
    away = wait_until(
        lambda: (s := sidecar.status())["master"]["reachable"] is False and s,
        timeout=3,
        interval=0.02,
        message="unreachable at the first failed sync",
    )
    assert time.monotonic() - killed < 1.5, "the next resync (1 s, +-10 %) failed"
    assert "connection refused" in away["master"]["error"]
    assert away["master"]["since"] is not None
    silent = wait_until(
        lambda: (s := sidecar.status())["master"]["checking"] is False and s,
        timeout=6,
        interval=0.02,
        message="not checking after three intervals",
    )
    assert 1.5 < time.monotonic() - killed < 4.5
    assert silent["master"]["checking_since"] is not None
    assert http_request("GET", f"{sidecar.url}/health").status == 200, "still serving"


def test_no_token_is_ever_logged(
    start_master: Any, start_sidecar: Any, service: NodeService, tmp_path: Path
) -> None:
    """The write token (master.token_file) and the drain token (sidecar.token_file) go
    through every path that logs: start, refusals of both, a bad and a good reload, a drain
    with a wrong and the right token, shutdown. Neither ever shows in the log."""
    write_token, drain_token = "wr1te-0f-the-master-7d1", "dra1n-0f-the-sidecar-52e"
    master_tokens = tmp_path / "master-tokens"
    master_tokens.write_text(f"{write_token}\n")
    (tmp_path / "write-token").write_text(f"# for the master\n{write_token}\n")
    (tmp_path / "drain-token").write_text(f"{drain_token}\n")
    master = start_master("--token-file", str(master_tokens))
    port = free_port()
    text = (
        sidecar_yaml(service, master.url, port, resync="1s").replace(
            "master:\n", "master:\n  token_file: write-token\n"
        )
        + "  token_file: drain-token\n"
    )
    sidecar = start_sidecar(text, port)
    wait_until(lambda: record(master), message="registered with the token")
    _edit_in_place(sidecar.config_path, text.replace("tags: [a, b]", "tags: [a, c]"))
    wait_until(lambda: record(master)["tags"] == ["a", "c"], timeout=5)  # type: ignore[index]
    # the master stops taking this token (rotated): 401s, logged as sync_failed
    master_tokens.write_text("another-token\n")
    sidecar.wait_for_event("sync_failed")
    master_tokens.write_text(f"{write_token}\n")
    wait_until(lambda: sidecar.status()["failures"] == 0, timeout=6, message="taken again")
    _edit_in_place(sidecar.config_path, text.replace(f"port: {service.port}", "port: x"))
    sidecar.wait_for_event("config_rejected")
    drain = f"{sidecar.url}/drain"
    assert http_request("POST", drain).status == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert http_request("POST", drain, headers=wrong).status == 401
    right = {"Authorization": f"Bearer {drain_token}"}
    answer = http_request("POST", drain, headers=right)
    assert answer.json()["drained"] is True, answer
    assert record(master) is None
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(10) == 0
    log = sidecar.log_path.read_text()
    assert "sync_failed" in log and "config_rejected" in log and "deregistered" in log
    assert write_token not in log and drain_token not in log


# A caller at another address than loopback: a namespace of the test's own, where the
# sidecar listens on every address and the caller connects to the namespace's own veth
# address (10.231.78.2, which lives only in there), so the sidecar sees a peer that is not
# loopback. Every packet stays inside that namespace.
NS_ADDRESS = "10.231.78.2"
_NS_POST = """
import http.client, json, sys
host, port, path, method, token = sys.argv[1:6]
conn = http.client.HTTPConnection(host, int(port), timeout=5)
headers = {"Authorization": f"Bearer {token}"} if token else {}
conn.request(method, path, headers=headers)
answer = conn.getresponse()
print(json.dumps({"status": answer.status, "allow": answer.getheader("Allow"),
                  "body": json.loads(answer.read() or b"null")}))
"""


@pytest.mark.netns
def test_drain_from_another_address_needs_the_token(tmp_path: Path) -> None:
    spaces = Namespaces(ip_binary())
    daemons: list[Daemon] = []
    try:
        ns = spaces.add("drain")
        try:
            spaces.run(ns, "link", "set", "lo", "up")
            spaces.run(ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
            spaces.run(ns, "addr", "add", f"{NS_ADDRESS}/24", "dev", "v0")
            spaces.run(ns, "link", "set", "v0", "up")
            spaces.run(ns, "link", "set", "v1", "up")
        except NetnsError as exc:
            pytest.skip(f"cannot make a veth pair here: {exc}")
        master = Master(
            spaces.exec_argv(
                ns,
                [str(BIN / "picoapi-master"), "--listen", "127.0.0.1:9500", "--store",
                 "memory://", "--log-format", "json"],
            ),
            tmp_path / "master.log",
        )  # fmt: skip
        daemons.append(master)
        master.wait_for_event("master_started")
        path = tmp_path / "service.yaml"
        text = (
            "service:\n  name: web\n  id: web-ns\n  address: 127.0.0.1\n  port: 8080\n"
            "master:\n  url: http://127.0.0.1:9500\n"
            "sidecar:\n  listen: 0.0.0.0:9501\n  advertise: 127.0.0.1:9501\n"
        )
        path.write_text(text)
        sidecar = Daemon(
            spaces.exec_argv(
                ns, [str(BIN / "picoapi-sidecar"), "--log-format", "json", "run", str(path)]
            ),
            tmp_path / "sidecar.log",
        )
        daemons.append(sidecar)
        sidecar.wait_for_event("registered")

        def ask(method: str, token: str = "", host: str = NS_ADDRESS) -> dict[str, Any]:
            argv = [sys.executable, "-I", "-S", "-c", _NS_POST, host, "9501", "/drain"]
            done = subprocess.run(
                spaces.exec_argv(ns, [*argv, method, token]),
                capture_output=True,
                text=True,
                timeout=15,
                stdin=subprocess.DEVNULL,
            )
            assert done.returncode == 0, done.stderr
            answer: dict[str, Any] = json.loads(done.stdout)
            return answer

        refused = ask("POST")
        assert refused["status"] == 403 and refused["body"]["error"]["code"] == "forbidden"
        assert ask("POST", "any-token")["status"] == 403, "no token file: no token opens it"
        got = ask("GET")
        assert (got["status"], got["allow"]) == (405, "POST")
        assert ns_http(spaces, ns, "http://127.0.0.1:9500/v1/services/web-ns")[0] == 200
        # a token file, by a reload: now the token opens it from anywhere, and only it
        (tmp_path / "drain-token").write_text("ns-drain-token\n")
        path.write_text(text + "  token_file: drain-token\n")
        sidecar.wait_for_event("config_reloaded")
        assert ask("POST")["status"] == 401
        assert ask("POST", host="127.0.0.1")["status"] == 401, "loopback needs it too"
        drained = ask("POST", "ns-drain-token")
        assert drained["status"] == 200 and drained["body"]["drained"] is True
        assert ns_http(spaces, ns, "http://127.0.0.1:9500/v1/services/web-ns")[0] == 404
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
        spaces.close()


def test_an_id_held_by_a_live_sidecar_is_refused_to_a_second_until_the_holder_is_critical(
    start_master: Any, start_sidecar: Any, service: NodeService
) -> None:
    """Two sidecars with one service.id on one host, at two ports: two instances. The
    second is refused (409 id_conflict, in its /status and log), never exits, and its
    DELETE at shutdown leaves the holder's record alone. Once the holder is SIGKILLed and
    the master finds it critical, the second takes the id over at its next resync."""
    master = start_master()
    host = socket.gethostname()
    first_port, second_port = free_port(), free_port()
    first = start_sidecar(sidecar_yaml(service, master.url, first_port), first_port, "a.yaml")
    wait_until(lambda: (r := record(master)) and r["status"] == "passing", message="held")
    assert record(master)["instance"] == f"{host}:{first_port}"  # type: ignore[index]

    def second_sidecar(name: str) -> Sidecar:
        text = sidecar_yaml(service, master.url, second_port, resync="1s")
        started: Sidecar = start_sidecar(text, second_port, name)
        return started

    second = second_sidecar("b.yaml")
    refused = second.wait_for_event("id_conflict")
    assert refused["holder"] == f"{host}:{first_port}"
    assert refused["instance"] == f"{host}:{second_port}" and refused["level"] == "warning"
    conflict = wait_until(lambda: second.status()["conflict"], message="shown in /status")
    assert conflict["holder"] == f"{host}:{first_port}"
    assert second.status()["registered"] is False
    held = record(master)
    assert held is not None and held["check"]["url"] == f"http://127.0.0.1:{first_port}/health"
    assert any(e["event"] == "id_conflict" for e in master.events()), "logged on both sides"
    # the second one leaves: its DELETE names its instance, and the holder keeps the id
    second.signal(signal.SIGTERM)
    assert second.wait(10) == 0
    assert "deregister_not_held" in [e["event"] for e in second.events()]
    assert record(master)["instance"] == f"{host}:{first_port}"  # type: ignore[index]
    # back again, refused again; then the holder dies without a word
    again = second_sidecar("b2.yaml")
    again.wait_for_event("id_conflict")
    first.kill()
    killed = time.monotonic()
    taken = wait_until(
        lambda: (r := record(master)) and r["instance"] == f"{host}:{second_port}" and r,
        timeout=8,
        message="taken over once the holder is critical",
    )
    assert time.monotonic() - killed < 5, "a check interval, then a resync"
    assert taken["check"]["url"] == f"http://127.0.0.1:{second_port}/health"
    wait_until(lambda: again.status()["conflict"] is None and again.status()["registered"])
    registered = again.wait_for_event("registered")
    assert registered["taken_over_from"] == f"{host}:{first_port}"
    assert again.proc.poll() is None


def _raw(port: int, data: bytes) -> tuple[int, dict[str, str], Any]:
    """Send bytes as they are (a request no client library would make); the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_every_error_answer_of_the_sidecar_is_json(
    start_sidecar: Any, service: NodeService
) -> None:
    """Its own (404, 405) and aiohttp's, made before any handler runs (a bad request line,
    headers too large): all `{"error": {"code", "message"}}`."""
    port = free_port()
    start_sidecar(sidecar_yaml(service, f"http://127.0.0.1:{free_port()}", port), port)
    close = b"Host: x\r\nConnection: close\r\n\r\n"
    status, headers, body = _raw(port, b"GET /drain HTTP/1.1\r\n" + close)
    assert (status, headers["Allow"], body["error"]["code"]) == (405, "POST", "method_not_allowed")
    status, _, body = _raw(port, b"GET /nope HTTP/1.1\r\n" + close)
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, _, body = _raw(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == 400 and set(body["error"]) == {"code", "message"}
    huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
    status, _, body = _raw(port, huge)
    assert status in (400, 431) and set(body["error"]) == {"code", "message"}
    assert http_request("GET", f"http://127.0.0.1:{port}/health").status == 200, "still serving"
