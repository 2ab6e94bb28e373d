"""`deploy/cluster_demo.py --once`, as `make cluster-demo` runs it: three etcd members,
three masters, three services with their sidecars; a master SIGKILLed, its share taken
over, the master started again; then everything stopped in order, the sidecars
deregistered and nothing left running. Every child starts with no signal blocked.

The demo needs etcd and its fixed loopback ports (the module's own list): the tests skip
when etcd is not installed or a port is in use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from tests.conftest import ROOT

DEMO = ROOT / "deploy" / "cluster_demo.py"
RUN_BOUND = 90.0  # seconds for the whole --once run, start to stopped
PID_LINE = re.compile(r"^  (\S+)\s+pid (\d+)\s", re.MULTILINE)
ROW = re.compile(
    r"^  127\.0\.0\.1:(?P<port>\d+)\s+(?P<pid>\d+)\s+(?P<index>\d+)\s+(?P<members>\d+)\s+"
    r"(?P<services>\d+), (?P<passing>\d+) of (?P<of>\d+) passing",
    re.MULTILINE,
)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def load_demo() -> ModuleType:
    """The demo as a module, for its port list and names: one source of truth."""
    if str(DEMO.parent) not in sys.path:  # as when run: its directory first (demokit)
        sys.path.insert(0, str(DEMO.parent))
    spec = importlib.util.spec_from_file_location("cluster_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while made
    spec.loader.exec_module(module)
    return module


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def demo_module() -> ModuleType:
    return load_demo()


@pytest.fixture
def free_ports(demo_module: ModuleType) -> None:
    if demo_module.etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    taken = [
        f"{port} ({who})" for port, who in demo_module.needed_ports() if not port_is_free(port)
    ]
    if taken:
        pytest.skip(f"the cluster demo's fixed ports are in use here: {', '.join(taken)}")


class Run:
    """The demo as a process in its own session, its output in a file read as it grows."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.out_path = data_dir.parent / f"{data_dir.name}.out"
        self.started = time.time()
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(DEMO), "--data-dir", str(data_dir), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,  # so the whole group can be killed in cleanup
            )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def pids(self) -> list[tuple[str, int]]:
        """Every (name, pid) the demo printed, a restarted master twice."""
        return [(name, int(pid)) for name, pid in PID_LINE.findall(self.output())]

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
        for _, pid in self.pids():
            if self.alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[list[Run]]:
    started: list[Run] = []
    try:
        yield started
    finally:
        for run in started:
            run.kill_all()


def signals_of(pid: int) -> tuple[int, int] | None:
    """(blocked, ignored) signal bits of a process's main thread, from /proc (Linux)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
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


def rows(section: str) -> dict[int, dict[str, int]]:
    return {
        int(m["port"]): {key: int(value) for key, value in m.groupdict().items()}
        for m in ROW.finditer(section)
    }


def section(output: str, start: str, end: str) -> str:
    assert start in output, output
    return output.split(start, 1)[1].split(end, 1)[0]


def test_once_walks_through_a_master_death_and_stops_everything(
    free_ports: None, runs: list[Run], tmp_path: Path, demo_module: ModuleType
) -> None:
    run = Run(tmp_path / "data", "--once")
    runs.append(run)
    # While it runs: each child's signal mask, as soon as its pid is printed. etcd is a
    # Go program, whose runtime blocks signals on a thread for a moment now and then: a
    # child counts as clean once it is seen with nothing blocked (an inherited mask would
    # stay), and SIGINT and SIGTERM not ignored.
    clean: set[int] = set()
    last_seen: dict[int, tuple[int, int]] = {}
    deadline = time.monotonic() + RUN_BOUND
    while run.proc.poll() is None and time.monotonic() < deadline:
        for _, pid in run.pids():
            if pid in clean or not run.alive(pid):
                continue
            bits = signals_of(pid)
            if bits is None:
                continue
            last_seen[pid] = bits
            blocked, ignored = bits
            if blocked == 0 and not any(ignored & (1 << (s - 1)) for s in STOP_SIGNALS):
                clean.add(pid)
        time.sleep(0.05)
    try:
        code = run.proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the demo did not finish within {RUN_BOUND:g}s:\n{run.output()}")
    output = run.output()
    assert code == 0, output
    assert time.time() - run.started < RUN_BOUND
    assert "Traceback" not in output, output

    names = {name for name, _ in run.pids()}
    etcd = {m.name for m in demo_module.ETCD}
    services = {name for name, _, _ in demo_module.SERVICES}
    expected = (
        etcd
        | {f"master-{n}" for n in range(1, len(demo_module.MASTER_PORTS) + 1)}
        | services
        | {f"sidecar-{name}" for name in services}
    )
    assert names == expected, output

    if Path("/proc/self/status").exists():
        unclean = {
            name: f"SigBlk {last_seen[pid][0]:#x} SigIgn {last_seen[pid][1]:#x}"
            for name, pid in run.pids()
            if pid not in clean and pid in last_seen
        }
        assert not unclean, f"children starting with signals blocked or ignored: {unclean}"
        unseen = [name for name, pid in run.pids() if pid not in last_seen]
        assert not unseen, f"never seen running: {unseen}"

    # Before the kill: three masters at one index, each service passing and checked.
    before = rows(section(output, "The registry through each master", "Walk-through 1/2"))
    assert set(before) == set(demo_module.MASTER_PORTS), output
    assert len({row["index"] for row in before.values()}) == 1, output
    assert all(row["members"] == 3 and row["passing"] == 3 for row in before.values()), output

    # The kill: master N's share checked again by another within TTL + one interval.
    killed = re.search(r"SIGKILL master-(\d) \(pid (\d+), 127\.0\.0\.1:(\d+)\)", output)
    assert killed, output
    killed_port = int(killed[3])
    bound = demo_module.TAKEOVER_BOUND
    takeovers = re.findall(
        r"checked by master (\d) ([\d.]+)s after the kill \((NOT )?within", output
    )
    assert takeovers, output
    for by, after, verdict in takeovers:
        assert int(by) != int(killed[1]) and not verdict, output
        assert float(after) <= bound, output
    assert "NOT" not in output, output
    assert "its lease ran out" in output, output

    # The survivors: the same index, two members, every service passing.
    after_kill = section(output, "The registry through masters", "Walk-through 2/2")
    survivors = rows(after_kill)
    assert set(survivors) == set(demo_module.MASTER_PORTS) - {killed_port}, output
    assert len({row["index"] for row in survivors.values()}) == 1, output
    assert all(row["members"] == 2 and row["passing"] == 3 for row in survivors.values()), output
    assert re.search(rf"127\.0\.0\.1:{killed_port}\s+-\s+-\s+-\s+\(no answer\)", after_kill)
    assert "whole: the same index" in after_kill, output

    # Back: three masters at one index again, the restarted one under a new pid.
    back = rows(section(output, "Walk-through 2/2", "Pids:"))
    assert set(back) == set(demo_module.MASTER_PORTS), output
    assert len({row["index"] for row in back.values()}) == 1, output
    assert all(row["members"] == 3 and row["passing"] == 3 for row in back.values()), output
    assert back[killed_port]["pid"] != int(killed[2])
    assert "back: all three masters at index" in output, output

    # Stopped in order, no child forced, none left.
    stopping = output.split("--once: stopping everything now", 1)[1]
    order = [stopping.index(f"stopping the {group}") for group in ROLE_ORDER]
    assert order == sorted(order), stopping
    assert "had to SIGKILL" not in stopping and "NOT deregistered" not in stopping, stopping
    assert "nothing the demo started is running" in stopping, stopping
    left = [name for name, pid in run.pids() if run.alive(pid)]
    assert not left, f"still running after the demo stopped: {left}"
    assert not list((run.data_dir / "run").glob("*.pid"))

    # The sidecars deregistered (the masters are gone: their logs tell).
    for name in services:
        log = run.data_dir / "logs" / f"sidecar-{name}.log"
        deregistered = [
            e
            for e in events(log)
            if e.get("event") == "deregistered" and e.get("service_id") == name
        ]
        assert deregistered, log.read_text()


ROLE_ORDER = ("sidecars", "services", "masters", "etcd members")


def test_a_taken_port_is_named_and_nothing_starts(
    free_ports: None, runs: list[Run], tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 9512))
        holder.listen()
        run = Run(tmp_path / "data", "--once")
        runs.append(run)
        code = run.proc.wait(20)
    output = run.output()
    assert code == 1, output
    assert "127.0.0.1:9512  needed by master-2" in output, output
    assert "Traceback" not in output
    assert not run.pids(), output


def test_help_names_the_options() -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO), "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    for option in ("--once", "--data-dir"):
        assert option in done.stdout
    assert "exit status" in done.stdout
