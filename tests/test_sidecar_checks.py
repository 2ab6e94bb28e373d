"""The probes against real things: the Node.js service, real ports, real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import aiohttp
import psutil
import pytest

from master.model import OUTPUT_MAX, Status
from sidecar.checks import (
    Check,
    ExecProbe,
    HttpProbe,
    ProcessProbe,
    SharedCheck,
    TcpProbe,
    build_check,
)
from sidecar.config import CheckConfig, ExecCheck, HttpCheck, ProcessCheck, TcpCheck
from tests import service_fixture
from tests.service_fixture import NodeService, unused_port

node_service = service_fixture.node_service
http_session = service_fixture.http_session

DEADLINE: Final = 5.0


def _dead(pid: int) -> bool:
    """Gone, or a zombie: killed, and only waiting for its parent (or init) to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_dead(pid: int) -> bool:
    deadline = time.monotonic() + DEADLINE
    while not _dead(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def kill_after() -> Iterator[list[int]]:
    """Pids a test saw its probes start; any still alive at the end is killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not _dead(pid):
            os.kill(pid, 9)


# --- HTTP ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (200, Status.PASSING),
        (201, Status.PASSING),
        (429, Status.WARNING),
        (404, Status.CRITICAL),
        (500, Status.CRITICAL),
        (503, Status.CRITICAL),
    ],
)
async def test_http_status_mapping(
    node_service: NodeService, http_session: aiohttp.ClientSession, code: int, status: Status
) -> None:
    node_service.set_health(code, body=f"answer {code}")
    result = await HttpProbe(http_session, node_service.url("/healthz"), 2.0).run()
    assert (result.status, result.http_status, result.output) == (status, code, f"answer {code}")
    assert result.duration_ms > 0


async def test_http_empty_body_shows_the_status_line(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    node_service.set_health(503, body="")
    result = await HttpProbe(http_session, node_service.url("/healthz"), 2.0).run()
    assert result.output == "HTTP 503 Service Unavailable"


async def test_http_redirect_is_not_followed(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    result = await HttpProbe(http_session, node_service.url("/redirect"), 2.0).run()
    assert (result.status, result.http_status) == (Status.CRITICAL, 302)
    assert node_service.hits("/healthz") == 0


async def test_http_timeout(node_service: NodeService, http_session: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    result = await HttpProbe(http_session, node_service.url("/hang"), 0.3).run()
    assert (result.status, result.output) == (Status.CRITICAL, "timed out after 300ms")
    assert result.http_status is None
    assert time.monotonic() - started < 2


async def test_http_connection_refused(http_session: aiohttp.ClientSession) -> None:
    port = unused_port()
    result = await HttpProbe(http_session, f"http://127.0.0.1:{port}/healthz", 2.0).run()
    assert result.status is Status.CRITICAL
    assert result.output == f"connection refused by 127.0.0.1:{port}"


async def test_http_body_capped(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    result = await HttpProbe(http_session, node_service.url("/big"), 2.0).run()
    assert (result.status, result.http_status) == (Status.PASSING, 200)
    assert result.output == "x" * OUTPUT_MAX


# --- TCP -------------------------------------------------------------------------------


async def test_tcp_open_port(node_service: NodeService) -> None:
    result = await TcpProbe("127.0.0.1", node_service.port, 2.0).run()
    assert (result.status, result.output) == (
        Status.PASSING,
        f"connected to 127.0.0.1:{node_service.port}",
    )


async def test_tcp_closed_port() -> None:
    port = unused_port()
    result = await TcpProbe("127.0.0.1", port, 2.0).run()
    assert (result.status, result.output) == (
        Status.CRITICAL,
        f"connection refused by 127.0.0.1:{port}",
    )


# --- process ---------------------------------------------------------------------------


async def test_process_by_pidfile(node_service: NodeService, tmp_path: Path) -> None:
    pidfile = tmp_path / "node.pid"
    pidfile.write_text(f"{node_service.pid}\n")
    probe = ProcessProbe(ProcessCheck(pidfile=str(pidfile)), 2.0)

    first = await probe.run()
    assert first.status is Status.PASSING
    assert first.output == f"process {node_service.pid} (node) is running"
    figures = probe.process
    assert figures is not None
    assert figures["pid"] == node_service.pid
    assert figures["cpu_percent"] is None  # no previous sample yet
    assert figures["rss_bytes"] > 1024 * 1024
    assert figures["threads"] >= 1
    assert isinstance(figures["open_files"], int)
    assert 0 <= figures["uptime_s"] < 60

    await probe.run()
    assert probe.process is not None
    assert isinstance(probe.process["cpu_percent"], float)  # the kept process has a sample

    node_service.kill()
    gone = await probe.run()
    assert gone.status is Status.CRITICAL
    assert gone.output == f"no process {node_service.pid} (from pidfile {pidfile})"
    assert probe.process is None


async def test_process_by_name(node_service: NodeService) -> None:
    probe = ProcessProbe(ProcessCheck(name="node"), 2.0)
    result = await probe.run()
    assert result.status is Status.PASSING
    assert probe.process is not None
    assert psutil.Process(probe.process["pid"]).name() == "node"


async def test_process_by_cmdline(node_service: NodeService) -> None:
    result = await ProcessProbe(ProcessCheck(cmdline="server.js"), 2.0).run()
    assert result.status is Status.PASSING

    probe = ProcessProbe(ProcessCheck(cmdline=f"server.js 0 {node_service.marker}"), 2.0)
    result = await probe.run()
    assert result.output == f"process {node_service.pid} (node) is running"
    await probe.run()  # the process found is kept: no new scan, and a cpu figure
    assert probe.process is not None
    assert isinstance(probe.process["cpu_percent"], float)

    node_service.kill()
    gone = await probe.run()
    assert gone.status is Status.CRITICAL
    assert gone.output == f"no process with 'server.js 0 {node_service.marker}' in its command line"


def test_process_by_cmdline_skips_the_sidecar_itself(tmp_path: Path) -> None:
    """The sidecar's own command line holds the needle too; it must not count as a match."""
    needle = f"only-in-this-argv-{os.getpid()}"
    script = (
        "import asyncio, sys\n"
        "from sidecar.checks import ProcessProbe\n"
        "from sidecar.config import ProcessCheck\n"
        "probe = ProcessProbe(ProcessCheck(cmdline=sys.argv[1]), 5.0)\n"
        "print(asyncio.run(probe.run()).output)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, needle],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
    )
    assert done.stdout.strip() == f"no process with {needle!r} in its command line"


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that has exited and that nobody has reaped yet; reaped at the end."""
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + DEADLINE
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.01)
        yield child.pid
    finally:
        child.wait()


async def test_process_zombie(zombie: int, tmp_path: Path) -> None:
    pidfile = tmp_path / "zombie.pid"
    pidfile.write_text(str(zombie))
    result = await ProcessProbe(ProcessCheck(pidfile=str(pidfile)), 2.0).run()
    assert (result.status, result.output) == (
        Status.CRITICAL,
        f"process {zombie} is a zombie (exited, not reaped)",
    )


@pytest.mark.parametrize(
    ("content", "output"),
    [
        (None, "pidfile {path} does not exist"),
        ("", "pidfile {path} holds no pid: ''"),
        ("nginx\n", "pidfile {path} holds no pid: 'nginx\\n'"),
    ],
)
async def test_process_bad_pidfile(tmp_path: Path, content: str | None, output: str) -> None:
    pidfile = tmp_path / "app.pid"
    if content is not None:
        pidfile.write_text(content)
    result = await ProcessProbe(ProcessCheck(pidfile=str(pidfile)), 2.0).run()
    assert (result.status, result.output) == (Status.CRITICAL, output.format(path=pidfile))


# --- exec ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"), [(0, Status.PASSING), (1, Status.WARNING), (2, Status.CRITICAL)]
)
async def test_exec_exit_codes(code: int, status: Status) -> None:
    result = await ExecProbe(("sh", "-c", f"echo out; echo err >&2; exit {code}"), 5.0).run()
    assert (result.status, result.output) == (status, "out\nerr\n")


async def test_exec_without_output_reports_the_exit_status() -> None:
    result = await ExecProbe(("sh", "-c", "exit 3"), 5.0).run()
    assert (result.status, result.output) == (Status.CRITICAL, "exit status 3")


async def test_exec_killed_by_a_signal() -> None:
    result = await ExecProbe(("sh", "-c", "kill -9 $$"), 5.0).run()
    assert (result.status, result.output) == (Status.CRITICAL, "killed by signal SIGKILL")


async def test_exec_output_capped_and_drained() -> None:
    """A megabyte of output: 4 KiB is kept and the rest read away, so the child finishes
    instead of blocking on a full pipe until the timeout."""
    chatty = "import sys; sys.stdout.write('x' * 1_000_000); sys.exit(1)"
    result = await ExecProbe((sys.executable, "-c", chatty), 5.0).run()
    assert (result.status, result.output) == (Status.WARNING, "x" * OUTPUT_MAX)


async def test_exec_timeout_kills_the_process_group(tmp_path: Path, kill_after: list[int]) -> None:
    script = tmp_path / "hang.sh"
    pids = tmp_path / "pids"
    script.write_text('#!/bin/sh\nsleep 30 &\necho "$$ $!" > "$1"\nsleep 30\n')
    script.chmod(0o755)

    started = time.monotonic()
    result = await ExecProbe((str(script), str(pids)), 1.0).run()
    assert (result.status, result.output) == (Status.CRITICAL, "timed out after 1s")
    assert time.monotonic() - started < 3

    shell, child = (int(pid) for pid in pids.read_text().split())
    kill_after.extend([shell, child])
    assert _wait_dead(shell), "the script outlived its timeout"
    assert _wait_dead(child), "the script's background child outlived the timeout"


async def test_exec_missing_executable(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-program"
    result = await ExecProbe((str(missing), "-q"), 5.0).run()
    assert (result.status, result.output) == (
        Status.CRITICAL,
        f"cannot run {missing}: no such executable",
    )


async def test_exec_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "check.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    result = await ExecProbe((str(script),), 5.0).run()
    assert (result.status, result.output) == (
        Status.CRITICAL,
        f"cannot run {script}: permission denied",
    )


# --- the factory and the single flight -------------------------------------------------


@pytest.mark.parametrize(
    ("probe", "kind", "cls"),
    [
        (HttpCheck("http://127.0.0.1:1/healthz"), "http", HttpProbe),
        (TcpCheck("127.0.0.1", 1), "tcp", TcpProbe),
        (ProcessCheck(name="nginx"), "process", ProcessProbe),
        (ExecCheck(("/bin/true",)), "exec", ExecProbe),
    ],
)
async def test_build_check(
    http_session: aiohttp.ClientSession,
    probe: HttpCheck | TcpCheck | ProcessCheck | ExecCheck,
    kind: str,
    cls: type[Check],
) -> None:
    check = build_check(CheckConfig(probe=probe, timeout=1.5), http_session)
    assert (type(check), check.kind, check.timeout) == (cls, kind, 1.5)


async def test_shared_check_runs_once_for_a_burst(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    node_service.set_health(200, body="slow but fine", delay_ms=300)
    shared = SharedCheck(HttpProbe(http_session, node_service.url("/healthz"), 2.0))
    assert (shared.kind, shared.last, shared.process) == ("http", None, None)

    results = await asyncio.gather(*(shared.run() for _ in range(50)))
    assert node_service.hits("/healthz") == 1
    assert all(result is results[0] for result in results)
    assert shared.last is results[0]
    assert results[0].output == "slow but fine"

    again = await shared.run()  # a finished run is not reused: the next caller probes anew
    assert node_service.hits("/healthz") == 2
    assert shared.last is again


async def test_shared_check_survives_a_caller_that_leaves(
    node_service: NodeService, http_session: aiohttp.ClientSession
) -> None:
    node_service.set_health(200, delay_ms=300)
    shared = SharedCheck(HttpProbe(http_session, node_service.url("/healthz"), 2.0))
    leaving = asyncio.create_task(shared.run())
    staying = asyncio.create_task(shared.run())
    await asyncio.sleep(0.05)
    leaving.cancel()
    result = await staying
    assert result.status is Status.PASSING
    assert leaving.cancelled()
    assert node_service.hits("/healthz") == 1


async def test_closing_a_shared_check_ends_its_run(tmp_path: Path, kill_after: list[int]) -> None:
    """At shutdown the owner closes the check: an exec still running goes, with its group."""
    script = tmp_path / "hang.sh"
    pids = tmp_path / "pids"
    script.write_text('#!/bin/sh\necho "$$" > "$1"\nsleep 30\n')
    script.chmod(0o755)
    shared = SharedCheck(ExecProbe((str(script), str(pids)), 20.0))
    caller = asyncio.create_task(shared.run())
    deadline = time.monotonic() + DEADLINE
    while not (pids.exists() and pids.read_text().strip()):
        assert time.monotonic() < deadline, "the script did not start"
        await asyncio.sleep(0.02)
    shell = int(pids.read_text())
    kill_after.append(shell)
    started = time.monotonic()
    await shared.close()
    assert time.monotonic() - started < 2
    assert _wait_dead(shell), "the check's process outlived the close"
    with pytest.raises(asyncio.CancelledError):
        await caller
    await shared.close()  # nothing in flight: a no-op


async def test_shared_check_shows_process_figures(
    node_service: NodeService, tmp_path: Path
) -> None:
    pidfile = tmp_path / "node.pid"
    pidfile.write_text(str(node_service.pid))
    shared = SharedCheck(ProcessProbe(ProcessCheck(pidfile=str(pidfile)), 2.0))
    await shared.run()
    assert shared.kind == "process"
    assert shared.process is not None
    assert shared.process["pid"] == node_service.pid
