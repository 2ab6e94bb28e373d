"""`deploy/demo.py` driven as the README's walk-through drives it: stop a service by the
pid the demo printed, see it turn critical, Ctrl-C, and find everything stopped and
deregistered. Also: a taken port and a lost sidecar stop the demo with a clear message.

The demo needs its fixed loopback ports (9500, 8081, 8082 and the sidecars' ports in
configs/demo/*.yaml): the tests skip when one is in use. Node.js is optional to the demo,
so to these tests as well.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.conftest import ROOT, http_request, wait_until

DEMO = ROOT / "deploy" / "demo.py"
CONFIGS = ROOT / "configs" / "demo"
MASTER = "http://127.0.0.1:9500"
READY = "Ctrl-C stops everything"  # the demo's last line once all is registered
PID_LINE = re.compile(r"^  (\S+)\s+pid (\d+)\s", re.MULTILINE)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def demo_files() -> dict[str, dict[str, Any]]:
    return {path.stem: yaml.safe_load(path.read_text()) for path in CONFIGS.glob("*.yaml")}


def demo_ports() -> list[int]:
    ports = [9500]
    for data in demo_files().values():
        ports += [int(data["service"]["port"]), int(data["sidecar"]["listen"].rsplit(":", 1)[1])]
    return ports


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Demo:
    """The demo as a process in its own session, its output in a file we read as it grows."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.out_path = data_dir / "demo.out"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(DEMO), "--data-dir", str(data_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,  # so the whole group can be killed in cleanup
            )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def pids(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in PID_LINE.findall(self.output())}

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output = self.output()
            if text in output:
                return output
            if self.proc.poll() is not None:
                raise AssertionError(f"the demo exited ({self.proc.returncode}):\n{output}")
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} from the demo within {timeout:g}s:\n{self.output()}")

    def child_pids(self) -> set[int]:
        """Every child the demo told of: the pids it printed and its pid files."""
        pids = set(self.pids().values())
        for pid_file in (self.data_dir / "demo").glob("*.pid"):
            pids.add(int(pid_file.read_text()))
        return pids

    def alive(self, pid: int) -> bool:
        """Running, and started by this demo (not a later process given the same pid)."""
        try:
            process = psutil.Process(pid)
            return (
                process.status() != psutil.STATUS_ZOMBIE
                and process.create_time() >= self.started - 1
            )
        except psutil.NoSuchProcess:
            return False

    def kill_all(self) -> None:
        """Whatever is left, by pid: the demo's group, then each child it told of."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        for pid in self.child_pids():
            if self.alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Callable[[], Demo]]:
    taken = [port for port in demo_ports() if not port_is_free(port)]
    if taken:
        pytest.skip(f"the demo's fixed ports are in use here: {taken}")
    started: list[Demo] = []

    def start() -> Demo:
        started.append(Demo(tmp_path / f"data-{len(started)}"))
        return started[-1]

    try:
        yield start
    finally:
        for each in started:
            each.kill_all()


def services() -> list[dict[str, Any]]:
    answer = http_request("GET", f"{MASTER}/v1/services", timeout=3)
    assert answer.status == 200, answer
    listing: list[dict[str, Any]] = answer.json()["services"]
    return listing


def status_of(service_id: str) -> str | None:
    for service in services():
        if service["id"] == service_id:
            return str(service["status"])
    return None


def signal_mask(pid: int) -> tuple[int, int]:
    """(blocked, ignored) signal bits of a process, from /proc (Linux)."""
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["SigBlk"], 16), int(fields["SigIgn"], 16)


def events(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            found.append(event)
    return found


def test_walk_through_stop_a_service_then_ctrl_c(demo: Callable[[], Demo]) -> None:
    run = demo()
    output = run.wait_for(READY, timeout=40)
    pids = run.pids()
    ours = {name: data["service"]["id"] for name, data in demo_files().items() if name in pids}
    assert "master" in pids and "static-site" in ours, output
    table = output.split("Registered:", 1)[1].split("\n\n", 1)[0]
    for service_id in ours.values():
        assert re.search(rf"^  {service_id}\s.*\spassing\s", table, re.MULTILINE), table

    # The bug this guards against: a blocked (or ignored) SIGTERM inherited from the demo.
    if Path("/proc/self/status").exists():
        for name, pid in pids.items():
            blocked, ignored = signal_mask(pid)
            assert blocked == 0, f"{name} starts with signals blocked: {blocked:#x}"
            for signum in STOP_SIGNALS:
                assert not ignored & (1 << (signum - 1)), f"{name} ignores {signum.name}"

    os.kill(pids["static-site"], signal.SIGTERM)  # the walk-through's `kill PID`
    interval = 2.0  # check.interval in configs/demo/static-site.yaml
    assert demo_files()["static-site"]["check"]["interval"] == "2s"
    wait_until(
        lambda: status_of(ours["static-site"]) == "critical",
        timeout=interval + 5,
        interval=0.2,
        message="the stopped static site shown critical",
    )
    run.wait_for("static-site (pid", timeout=5)  # the demo tells, and keeps running
    assert run.proc.poll() is None

    stopping = time.monotonic()
    os.kill(run.proc.pid, signal.SIGINT)  # Ctrl-C
    assert run.proc.wait(10) == 0, run.output()
    assert time.monotonic() - stopping < 10
    assert "SIGKILL" not in run.output()
    left = [name for name, pid in pids.items() if run.alive(pid)]
    assert not left, f"still running after the demo stopped: {left}"

    logs = run.data_dir / "demo-logs"
    for name, service_id in ours.items():
        deregistered = [
            e
            for e in events(logs / f"sidecar-{name}.log")
            if e.get("event") == "deregistered" and e.get("service_id") == service_id
        ]
        assert deregistered, (logs / f"sidecar-{name}.log").read_text()
    with sqlite3.connect(run.data_dir / "registry.db") as db:
        rows = {row[0] for row in db.execute("SELECT id FROM services")}
    assert not rows & set(ours.values()), rows
    assert not list((run.data_dir / "demo").glob("*.pid"))


def test_a_taken_port_is_named_and_nothing_starts(demo: Callable[[], Demo]) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 8081))
        holder.listen()
        run = demo()
        code = run.proc.wait(10)
    output = run.output()
    assert code != 0, output
    assert "127.0.0.1:8081" in output and "static-site" in output, output
    assert "Traceback" not in output
    assert not run.child_pids(), output
    strays = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(run.data_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert not strays


def test_a_lost_sidecar_is_told_and_the_rest_stopped(demo: Callable[[], Demo]) -> None:
    run = demo()
    run.wait_for(READY, timeout=40)
    pids = run.pids()
    os.kill(pids["sidecar-static-site"], signal.SIGKILL)
    code = run.proc.wait(10)
    output = run.output()
    assert code == 1, output
    assert f"sidecar-static-site (pid {pids['sidecar-static-site']}) exited" in output, output
    assert "killed by SIGKILL" in output
    assert "sidecar_started" in output  # the end of its log is shown
    assert "Traceback" not in output
    left = [name for name, pid in pids.items() if run.alive(pid)]
    assert not left, f"still running after the demo stopped: {left}"
