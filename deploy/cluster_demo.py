"""`make cluster-demo`: three masters sharing one registry on a three-member etcd.

Everything runs on loopback from this checkout, offline: etcd (the system's /usr/bin/etcd)
as three members, three masters on it, and three small services (`python3 -m http.server`
over configs/demo/site), each with a sidecar that lists all three masters. The demo shows
the registry through each master, then walks through a master's death: it SIGKILLs
master 1, shows the registry whole through masters 2 and 3 (same index, every service
passing, master 1's share of the checks taken over once its membership lease runs out),
and starts master 1 again. Then it waits for Ctrl-C (or stops by itself with --once) and
stops everything in order: sidecars (they deregister), services, masters, etcd.

Signals, as in deploy/demo.py: the demo never blocks any. It catches SIGINT and SIGTERM
with a handler that only sets a flag (a caught signal is reset to its default in a child
at exec), so every child starts with default dispositions and an empty mask. The children
run in sessions of their own, so a Ctrl-C in the terminal reaches only the demo, which
stops them in order; on Linux each child also gets SIGTERM should the demo itself be
killed (PR_SET_PDEATHSIG), so none outlives it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

HOW_TO_RUN = (
    "run `make cluster-demo`, or .venv/bin/python deploy/cluster_demo.py after `make demo` once"
)
try:
    from demokit import Stop, exit_text, holder, port_is_taken, say, show, tail
except ImportError as exc:  # a python without the project's dependencies
    sys.exit(f"cluster demo: {exc.name} is not installed for {sys.executable}; {HOW_TO_RUN}")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # picoapi-master and picoapi-sidecar live beside python
SITE = ROOT / "configs" / "demo" / "site"  # healthz and openapi.json
HOST = "127.0.0.1"
ETCD_CANDIDATES = ("/usr/bin/etcd", "etcd")


@dataclass(frozen=True)
class EtcdMember:
    name: str
    client_port: int
    peer_port: int


ETCD = (
    EtcdMember("etcd-1", 2379, 2380),
    EtcdMember("etcd-2", 22379, 22380),
    EtcdMember("etcd-3", 32379, 32380),
)
STORE = "etcd://" + ",".join(f"{HOST}:{m.client_port}" for m in ETCD)
MASTER_PORTS = (9511, 9512, 9513)
# name, the service's port, its sidecar's port
SERVICES = (("site-a", 8111, 9611), ("site-b", 8112, 9612), ("site-c", 8113, 9613))
MEMBER_TTL = 5.0  # --member-ttl: short, so the walk-through's failover is quick
CHECK_INTERVAL = 2.0  # check.interval of every service
TAKEOVER_BOUND = MEMBER_TTL + CHECK_INTERVAL  # a dead master's share is checked again by then
REBALANCE_SECONDS = 1.5  # a share that moved is checked by its new master within 1 s

# How long each group may take after SIGTERM before it is SIGKILLed. The sidecars promise
# to deregister and exit within 5 s; a master leaves etcd (revokes its lease, at most 1 s)
# and closes; etcd members going down together cannot all hand over leadership.
STOP_BUDGET = {"sidecar": 5.0, "service": 1.5, "master": 4.0, "etcd": 5.0}
STOP_ORDER = ("sidecar", "service", "master", "etcd")
ROLE_NAMES = {
    "sidecar": "sidecars",
    "service": "services",
    "master": "masters",
    "etcd": "etcd members",
}
START_TIMEOUT = 30.0  # for etcd's first election, a master, every service passing
LOG_TAIL = 12  # lines of a failed child's log to show
TICK = 0.2  # how often the demo looks at its children and at the stop flag
HTTP_TIMEOUT = 2.0

stop_requested: list[str] = []  # names of the stop signals received (the handler appends)


class ChildFailed(Exception):
    """A child the demo cannot go on without has exited (or does not answer)."""

    def __init__(self, child: Child, why: str = ""):
        super().__init__(child.name)
        self.child = child
        self.why = why


@dataclass
class Child:
    name: str
    role: str  # "etcd", "master", "service" or "sidecar": they stop in the reverse order
    proc: subprocess.Popen[bytes]
    log: Path
    pid_file: Path
    expected_exit: bool = False  # the walk-through killed it
    reported: bool = False


@dataclass
class Paths:
    """Everything the demo writes, under --data-dir."""

    data: Path
    etcd: Path  # the members' data directories, made afresh at each start
    logs: Path
    run: Path  # the sidecars' YAML files and the pid files

    @classmethod
    def under(cls, data: Path) -> Paths:
        data = data.resolve()
        return cls(data, data / "etcd", data / "logs", data / "run")


# --- output ------------------------------------------------------------------------------


def log_events(path: Path) -> Iterator[dict[str, Any]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def master_label(port: int) -> str:
    return f"master {MASTER_PORTS.index(port) + 1}"


# --- ports -------------------------------------------------------------------------------


def needed_ports() -> Iterator[tuple[int, str]]:
    for member in ETCD:
        yield member.client_port, f"{member.name} (clients)"
        yield member.peer_port, f"{member.name} (peers)"
    for n, port in enumerate(MASTER_PORTS, 1):
        yield port, f"master-{n}"
    for name, port, sidecar_port in SERVICES:
        yield port, name
        yield sidecar_port, f"sidecar-{name}"


def check_ports() -> bool:
    taken = [(port, who) for port, who in needed_ports() if port_is_taken(port)]
    if not taken:
        return True
    say("cluster demo: cannot start, these ports are taken:")
    for port, who in taken:
        by = holder(port)
        say(f"  {HOST}:{port}  needed by {who}" + (f"; in use by {by}" if by else ""))
    say("Stop whatever holds them (an earlier demo still running?) and try again.")
    return False


# --- children ----------------------------------------------------------------------------


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel SIGTERM the child when the demo dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def arm() -> None:  # in the child, between fork and exec
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the demo died before the line above
            os._exit(1)

    return arm


PREEXEC = _parent_death_signal()


def start(
    children: list[Child],
    name: str,
    role: str,
    argv: list[str],
    paths: Paths,
    about: str,
    env: dict[str, str] | None = None,
) -> Child:
    log = paths.logs / f"{name}.log"
    with open(log, "ab") as out:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "PICOAPI_LOG_FORMAT": "json", **(env or {})},
            # Its own session: the terminal's Ctrl-C reaches only the demo, which stops the
            # children in order (sidecars before the masters they deregister from).
            start_new_session=True,
            preexec_fn=PREEXEC,
        )
    pid_file = paths.run / f"{name}.pid"
    pid_file.write_text(f"{proc.pid}\n")
    child = Child(name, role, proc, log, pid_file)
    children.append(child)
    say(f"  {name:<15} pid {proc.pid:<7}  {about}")
    return child


def watch(children: list[Child], ready: bool) -> None:
    """Raise Stop on a stop signal, ChildFailed when a child exits that the demo needs.

    Once the walk-through is done (`ready`), an exit is told and the demo goes on: the
    user may be killing masters or etcd members to see what the others do."""
    if stop_requested:
        raise Stop
    for child in children:
        if child.expected_exit or child.reported:
            continue
        code = child.proc.poll()
        if code is None:
            continue
        if ready:
            child.reported = True
            say(f"\ncluster demo: {child.name} (pid {child.proc.pid}) exited ({exit_text(code)});")
            say("  the rest runs on until Ctrl-C.")
            continue
        raise ChildFailed(child)


def pause(children: list[Child], seconds: float, ready: bool = False) -> None:
    deadline = time.monotonic() + seconds
    while True:
        watch(children, ready)
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(TICK, left))


def stop_all(children: list[Child]) -> list[str]:
    """SIGTERM each group in STOP_ORDER, waiting (bounded) for it before the next, so the
    sidecars deregister while the masters answer and the masters leave etcd while it runs.
    Returns the names that had to be SIGKILLed."""
    forced = []
    for role in STOP_ORDER:
        group = sorted((c for c in children if c.role == role), key=lambda c: c.name)
        running = [c for c in group if c.proc.poll() is None]
        if running:
            say(f"  stopping the {ROLE_NAMES[role]} ({', '.join(c.name for c in running)})…")
        # etcd: the followers first, then the leader. A leader stopped while its peers are
        # up hands its leadership to one of them, and waits seconds for it if that peer is
        # stopping too; with the followers gone it has no one to hand over to, and exits.
        leader = etcd_leader(running) if role == "etcd" else None
        for wave in ([c for c in group if c is not leader], [leader] if leader else []):
            for child in wave:
                if child.proc.poll() is None:
                    child.proc.terminate()
            budget = STOP_BUDGET[role]
            deadline = time.monotonic() + budget
            for child in wave:
                try:
                    child.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    say(
                        f"cluster demo: {child.name} (pid {child.proc.pid}) did not stop "
                        f"within {budget:g}s of SIGTERM: killing it (SIGKILL)"
                    )
                    child.proc.kill()
                    child.proc.wait()
                    forced.append(child.name)
                child.pid_file.unlink(missing_ok=True)
        if role == "sidecar" and group:
            gone = [c.name for c in group if deregistered(c.log)]
            kept = [c.name for c in group if c.name not in gone]
            say(f"    deregistered: {', '.join(gone) or 'none'}")
            if kept:
                say(f"    NOT deregistered (see their logs): {', '.join(kept)}")
    return forced


def etcd_leader(running: list[Child]) -> Child | None:
    """The member that is etcd's leader now, if one of `running` says so."""
    by_name = {c.name: c for c in running}
    for member in ETCD:
        if member.name not in by_name:
            continue
        try:
            status = etcd_status(member, timeout=0.5)
        except (OSError, ValueError):
            continue
        if str(status.get("leader")) == str(status.get("header", {}).get("member_id")):
            return by_name[member.name]
    return None


def deregistered(log: Path) -> bool:
    return any(event.get("event") == "deregistered" for event in log_events(log))


# --- HTTP --------------------------------------------------------------------------------


def get(url: str) -> tuple[Any, dict[str, str]]:
    """The JSON body of a GET, and the answer's headers."""
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as answer:
        return json.load(answer), dict(answer.headers)


def etcd_status(member: EtcdMember, timeout: float = HTTP_TIMEOUT) -> dict[str, Any]:
    """The member's /v3/maintenance/status through its JSON gateway."""
    request = urllib.request.Request(
        f"http://{HOST}:{member.client_port}/v3/maintenance/status",
        data=b"{}",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        status: dict[str, Any] = json.load(answer)
    return status


def epoch(text: str) -> float:
    """The master's RFC 3339 time (`2026-11-28T13:35:38.123Z`) as seconds since the epoch."""
    return datetime.fromisoformat(text).timestamp()


@dataclass
class View:
    """The registry as one master shows it (None everywhere: it did not answer)."""

    port: int
    health: dict[str, Any] | None = None
    index: int | None = None  # X-Picoapi-Index of /v1/services
    stale: str | None = None  # X-Picoapi-Stale, when it says the store is out of reach
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def up(self) -> bool:
        return self.health is not None and self.index is not None

    @property
    def members(self) -> int | None:
        return None if self.health is None else self.health.get("cluster", {}).get("members")

    def passing(self, ids: list[str]) -> int:
        return sum(1 for i in ids if self.records.get(i, {}).get("status") == "passing")


def view_of(port: int) -> View:
    view = View(port)
    base = f"http://{HOST}:{port}"
    try:
        view.health, _ = get(f"{base}/healthz")
        listing, headers = get(f"{base}/v1/services")
        view.records = {s["id"]: s for s in listing["services"]}
        view.index = int(headers["X-Picoapi-Index"])
        view.stale = headers.get("X-Picoapi-Stale")
    except (OSError, ValueError, KeyError, TypeError):
        return View(port)
    return view


def checkers(views: list[View], ids: list[str]) -> dict[str, int | None]:
    """Which master checks each service: the one holding its newest check result.

    Only the master that checks a service holds its latest result (a result that confirms
    the status stays in that master's memory; only a change of status is written to etcd,
    and then every master holds it). So the owner is the one master whose last check is
    newer than everyone else's, and recent (within an interval and a bit)."""
    now = time.time()
    found: dict[str, int | None] = {}
    for service_id in ids:
        seen = sorted(
            (
                (epoch(view.records[service_id]["last_check"]["at"]), view.port)
                for view in views
                if view.up and (view.records.get(service_id) or {}).get("last_check")
            ),
            reverse=True,
        )
        newest = seen[0] if seen else None
        unique = newest is not None and (len(seen) == 1 or seen[1][0] < newest[0])
        fresh = newest is not None and now - newest[0] <= CHECK_INTERVAL + 1.5
        found[service_id] = newest[1] if newest and unique and fresh else None
    return found


def table(views: list[View], ids: list[str], pids: dict[int, str]) -> str:
    checks = checkers(views, ids)
    rows = [("MASTER", "PID", "INDEX", "MEMBERS", "SERVICES", "CHECKS")]
    for view in views:
        address = f"{HOST}:{view.port}"
        if not view.up:
            rows.append((address, pids.get(view.port, "-"), "-", "-", "(no answer)", "-"))
            continue
        mine = [i for i in ids if checks.get(i) == view.port]
        services = f"{len(view.records)}, {view.passing(ids)} of {len(ids)} passing"
        if view.stale is not None:
            services += f" (stale {view.stale}s)"
        rows.append(
            (
                address,
                pids.get(view.port, "-"),
                str(view.index),
                str(view.members),
                services,
                ", ".join(mine) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def settled(views: list[View], ids: list[str], members: int) -> bool:
    """Every master answers, at one index, counts `members`, shows every service passing,
    and each service has one master checking it."""
    if not all(v.up and v.stale is None for v in views):
        return False
    if len({v.index for v in views}) != 1 or any(v.members != members for v in views):
        return False
    if any(v.passing(ids) != len(ids) for v in views):
        return False
    return all(port is not None for port in checkers(views, ids).values())


def wait_settled(
    children: list[Child], ports: list[int], ids: list[str], members: int, seconds: float
) -> tuple[list[View], bool]:
    """`settled`, and it has been for REBALANCE_SECONDS since the members were counted
    right (a share that moved is first checked by its new master within a second)."""
    deadline = time.monotonic() + seconds
    counted: float | None = None
    while True:
        views = [view_of(port) for port in ports]
        now = time.monotonic()
        right = all(v.members == members for v in views)
        counted = (counted or now) if right else None
        if settled(views, ids, members) and counted and now - counted >= REBALANCE_SECONDS:
            return views, True
        if now >= deadline:
            return views, False
        pause(children, 0.3)


# --- the pieces --------------------------------------------------------------------------


def etcd_binary() -> str | None:
    for candidate in ETCD_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def etcd_argv(binary: str, member: EtcdMember, paths: Paths) -> list[str]:
    def peer(m: EtcdMember) -> str:
        return f"http://{HOST}:{m.peer_port}"

    client = f"http://{HOST}:{member.client_port}"
    return [
        binary,
        f"--name={member.name}",
        f"--data-dir={paths.etcd / member.name}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer(member)}",
        f"--initial-advertise-peer-urls={peer(member)}",
        "--initial-cluster=" + ",".join(f"{m.name}={peer(m)}" for m in ETCD),
        "--initial-cluster-token=picoapi-cluster-demo",
        "--initial-cluster-state=new",
        "--logger=zap",
    ]


def start_etcd(children: list[Child], binary: str, paths: Paths) -> list[Child]:
    shutil.rmtree(paths.etcd, ignore_errors=True)  # a fresh cluster at each start
    paths.etcd.mkdir(parents=True)
    say(f"etcd, three members on loopback (data afresh in {show(paths.etcd)}/):")
    started = time.monotonic()
    members = [
        start(
            children,
            m.name,
            "etcd",
            etcd_argv(binary, m, paths),
            paths,
            f"etcd on {HOST}:{m.client_port} (peers {HOST}:{m.peer_port})",
        )
        for m in ETCD
    ]
    deadline = started + START_TIMEOUT
    leaders: set[str] = set()
    while time.monotonic() < deadline:
        try:
            leaders = {str(etcd_status(m).get("leader", "0")) for m in ETCD}
        except (OSError, ValueError):
            leaders = set()
        if len(leaders) == 1 and "0" not in leaders:
            say(f"  a leader elected in {time.monotonic() - started:.1f}s")
            return members
        pause(children, TICK)
    raise ChildFailed(members[0], f"etcd elected no leader within {START_TIMEOUT:g}s")


def master_argv(port: int) -> list[str]:
    return [
        *(str(BIN / "picoapi-master"), "--listen", f"{HOST}:{port}"),
        *("--store", STORE, "--member-ttl", f"{MEMBER_TTL:g}s"),
    ]


def start_master(children: list[Child], n: int, paths: Paths) -> Child:
    port = MASTER_PORTS[n]
    return start(
        children,
        f"master-{n + 1}",
        "master",
        master_argv(port),
        paths,
        f"picoapi-master on {HOST}:{port}",
    )


def wait_answering(children: list[Child], child: Child, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            get(f"http://{HOST}:{port}/healthz")
            return
        except (OSError, ValueError):
            pause(children, TICK)
    raise ChildFailed(child, f"no answer on {HOST}:{port} within {START_TIMEOUT:g}s")


def sidecar_yaml(name: str, port: int, sidecar_port: int) -> str:
    masters = ", ".join(f"http://{HOST}:{p}" for p in MASTER_PORTS)
    return f"""\
# Written by deploy/cluster_demo.py at each start: edit it while the demo runs and the
# sidecar follows (it is made afresh at the next start).
service:
  name: {name}
  id: {name}
  address: {HOST}
  port: {port}
  tags: [demo, cluster, python]
  meta: {{runtime: python3 -m http.server, owner: cluster-demo}}
  openapi: /openapi.json
check:
  http: /healthz
  interval: {CHECK_INTERVAL:g}s
  timeout: 1s
  deregister_after: 10m
master:
  url: [{masters}]   # tried in order
sidecar:
  listen: {HOST}:{sidecar_port}
  advertise: {HOST}:{sidecar_port}
  resync: 30s
"""


def start_services(children: list[Child], paths: Paths) -> list[str]:
    say("\nservices, each with a sidecar listing the three masters (tried in order):")
    for name, port, _ in SERVICES:
        argv = [
            *(sys.executable, "-m", "http.server", str(port)),
            *("--bind", HOST, "--directory", str(SITE)),
        ]
        start(children, name, "service", argv, paths, f"python3 -m http.server {port}")
    ids = []
    for name, port, sidecar_port in SERVICES:
        path = paths.run / f"{name}.yaml"
        path.write_text(sidecar_yaml(name, port, sidecar_port))
        argv = [str(BIN / "picoapi-sidecar"), "run", str(path)]
        about = f"picoapi-sidecar run {show(path)}"
        start(children, f"sidecar-{name}", "sidecar", argv, paths, about)
        ids.append(name)  # the service's id, as its file says
    return ids


# --- the walk-through --------------------------------------------------------------------


def pids_by_port(masters: list[Child]) -> dict[int, str]:
    return {
        port: str(child.proc.pid)
        for port, child in zip(MASTER_PORTS, masters, strict=True)
        if child.proc.poll() is None
    }


def show_views(views: list[View], ids: list[str], masters: list[Child], ok: bool) -> None:
    say(table(views, ids, pids_by_port(masters)))
    if not ok:
        say("  (not settled yet: the masters disagree, or a service is not passing or not")
        say("   checked; the logs are in the logs folder)")


def kill_a_master(
    children: list[Child], masters: list[Child], ids: list[str], before: list[View]
) -> int:
    """SIGKILL master 1 and follow the survivors until its share is checked again; the
    position of the master killed."""
    share = checkers(before, ids)
    victim = 0
    if not any(port == MASTER_PORTS[0] for port in share.values()):
        # The share is by hashing over member names, which are new at each start: master 1
        # may have drawn nothing. Killing it would then move no check at all.
        victim = next((n for n, port in enumerate(MASTER_PORTS) if port in share.values()), victim)
        if victim:
            say("  (master 1 checks none of the services this time: the share is by hashing")
            say(f"   over member names, new at each start; so master {victim + 1} is killed")
            say("   instead, since it checks some)")
    port = MASTER_PORTS[victim]
    child = masters[victim]
    theirs = sorted(i for i, p in share.items() if p == port)
    others = [p for p in MASTER_PORTS if p != port]
    child.expected_exit = True
    killed_at = time.time()
    started = time.monotonic()
    os.kill(child.proc.pid, signal.SIGKILL)
    child.proc.wait(5)
    child.pid_file.unlink(missing_ok=True)
    say(
        f"  SIGKILL master-{victim + 1} (pid {child.proc.pid}, {HOST}:{port}), which checks "
        f"{', '.join(theirs) or 'nothing'}."
    )
    say(
        f"  It says no goodbye, so the others wait for its membership lease to run out "
        f"(--member-ttl {MEMBER_TTL:g}s)"
    )
    say(
        f"  and then take its share: within TTL + one check interval = {MEMBER_TTL:g}s + "
        f"{CHECK_INTERVAL:g}s = {TAKEOVER_BOUND:g}s."
    )

    lapsed: float | None = None
    taken: dict[str, tuple[int, float]] = {}
    deadline = started + TAKEOVER_BOUND + 10.0
    while time.monotonic() < deadline and (lapsed is None or len(taken) < len(theirs)):
        views = [view_of(p) for p in others]
        if lapsed is None and all(v.members == len(others) for v in views):
            lapsed = time.monotonic() - started
        for service_id in theirs:
            for view in views:
                last = (view.records.get(service_id) or {}).get("last_check")
                if service_id not in taken and last and epoch(last["at"]) > killed_at:
                    taken[service_id] = (view.port, epoch(last["at"]) - killed_at)
        pause(children, TICK)
    if lapsed is None:
        say("  its lease did NOT run out within the bound: the others still count it")
    else:
        say(
            f"  its lease ran out {lapsed:.1f}s after the kill: masters {labels(others)} "
            f"count {len(others)} members"
        )
    for service_id in theirs:
        if service_id in taken:
            by, after = taken[service_id]
            verdict = "within" if after <= TAKEOVER_BOUND else "NOT within"
            say(
                f"  {service_id}: checked by {master_label(by)} {after:.1f}s after the kill "
                f"({verdict} {TAKEOVER_BOUND:g}s)"
            )
        else:
            say(f"  {service_id}: NOT checked by another master within the bound")
    return victim


def labels(ports: list[int]) -> str:
    return " and ".join(str(MASTER_PORTS.index(p) + 1) for p in ports)


def run(children: list[Child], etcd: str, paths: Paths, once: bool) -> None:
    """Start everything, walk through a master's death, and wait for a stop signal (Stop)
    or, with `once`, return. ChildFailed when something needed is lost."""
    start_etcd(children, etcd, paths)
    say(f"\nmasters on --store {STORE} --member-ttl {MEMBER_TTL:g}s:")
    masters = [start_master(children, n, paths) for n in range(len(MASTER_PORTS))]
    for child, port in zip(masters, MASTER_PORTS, strict=True):
        wait_answering(children, child, port)
    ids = start_services(children, paths)
    ports = list(MASTER_PORTS)

    views, ok = wait_settled(children, ports, ids, len(ports), START_TIMEOUT)
    say("\nThe registry through each master (CHECKS: the services that master checks):")
    show_views(views, ids, masters, ok)

    say("\nWalk-through 1/2: a master dies.")
    victim = kill_a_master(children, masters, ids, views)
    survivors = [p for p in ports if p != MASTER_PORTS[victim]]
    views, ok = wait_settled(children, survivors, ids, len(survivors), START_TIMEOUT)
    say(f"The registry through masters {labels(survivors)}:")
    show_views([View(MASTER_PORTS[victim]), *views], ids, masters, ok)
    if ok:
        say(
            f"  whole: the same index {views[0].index} on both, all {len(ids)} services "
            "passing, every one checked"
        )

    n = victim + 1
    say(f"\nWalk-through 2/2: master {n} starts again.")
    children.remove(masters[victim])
    masters[victim] = start_master(children, victim, paths)
    wait_answering(children, masters[victim], MASTER_PORTS[victim])
    views, ok = wait_settled(children, ports, ids, len(ports), START_TIMEOUT)
    share = [i for i, p in checkers(views, ids).items() if p == MASTER_PORTS[victim]]
    say(
        "  it joins as a new member, reads the registry from etcd and "
        + (f"checks {', '.join(share)}:" if share else "checks none (the hashing's draw):")
    )
    show_views(views, ids, masters, ok)
    if ok:
        say(f"  back: all three masters at index {views[0].index}")

    say(
        f"\nPids: {show(paths.run)}/*.pid   logs: {show(paths.logs)}/*.log   "
        f"sidecar files: {show(paths.run)}/*.yaml"
    )
    if once:
        say("\n--once: stopping everything now: the sidecars first (they deregister), then")
        say("the services, the masters and etcd.")
        return
    say(f"Try: curl -si {HOST}:9512/healthz; kill -9 a master or an etcd member by its pid")
    say("     (two etcd members of three keep it writable; with fewer, the masters answer")
    say("     reads from memory with X-Picoapi-Stale and refuse writes with 503).")
    say("\nCtrl-C stops everything: the sidecars first (they deregister), then the services,")
    say("the masters and etcd.")
    while True:
        pause(children, 3600, ready=True)


# --- main --------------------------------------------------------------------------------


def on_signal(signum: int, _frame: object) -> None:
    stop_requested.append(signal.Signals(signum).name)


def catch_stop_signals() -> None:
    """Before any child starts: catching (not blocking) is what keeps the children's
    signals at their defaults. A mask the demo itself was started with (a launcher that
    blocks signals) is cleared too, since children inherit it across exec."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    # A closed terminal would kill the demo and leave its children (in their own sessions)
    # running: stop them instead. Unless the user ran us under nohup, which means "ignore".
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, on_signal)


USAGE = f"""\
Run three PicoAPI masters on a three-member etcd, on loopback, offline:

  etcd-1..3            127.0.0.1:2379/2380, 22379/22380, 32379/32380 (clients/peers)
  master-1..3          127.0.0.1:9511, 9512, 9513 on {STORE}
  site-a, -b, -c       127.0.0.1:8111..8113  python3 -m http.server over configs/demo/site
  sidecar-site-a..c    127.0.0.1:9611..9613  picoapi-sidecar run DIR/run/site-?.yaml

The masters run with --member-ttl {MEMBER_TTL:g}s (the default is 10s) and the services
are checked every {CHECK_INTERVAL:g}s, so a dead master's share is checked again within
{TAKEOVER_BOUND:g}s. The demo prints each process's pid (also in DIR/run/NAME.pid) and the
registry through each master; then it SIGKILLs master 1, shows the registry through
masters 2 and 3, starts master 1 again and shows all three, and runs until Ctrl-C.
"""

EPILOG = """\
Ctrl-C (or SIGTERM) stops the sidecars first, so they deregister, then the services, the
masters and etcd, in a few seconds. etcd starts afresh at each run (its data is in
DIR/etcd/). If a child exits before the walk-through is done, the demo shows the end of
its log and stops the rest; after it, an exit is told and the demo goes on.

exit status: 0 after Ctrl-C, SIGTERM or --once; 1 if etcd is missing, a port is taken or
a child failed; 2 on a bad option
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy/cluster_demo.py",
        description=USAGE,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        default=ROOT / "picoapi-data" / "cluster-demo",
        help=(
            "etcd's data (DIR/etcd/), the logs (DIR/logs/), the sidecars' files and the pid "
            "files (DIR/run/); default: picoapi-data/cluster-demo in the checkout (ignored "
            "by git)"
        ),
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="stop everything after the walk-through instead of waiting for Ctrl-C",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [n for n in ("picoapi-master", "picoapi-sidecar") if not (BIN / n).exists()]
    if missing:
        say(f"cluster demo: no {' or '.join(missing)} next to {sys.executable}; {HOW_TO_RUN}")
        return 1
    etcd = etcd_binary()
    if etcd is None:
        say("cluster demo: etcd is not installed (Debian/Ubuntu: apt-get install etcd-server;")
        say("  or put an etcd binary on PATH)")
        return 1
    catch_stop_signals()
    if not check_ports():
        return 1
    paths = Paths.under(args.data_dir)
    for folder in (paths.logs, paths.run):
        folder.mkdir(parents=True, exist_ok=True)
    for stale in (*paths.run.glob("*.pid"), *paths.logs.glob("*.log")):
        stale.unlink()  # a demo killed earlier: its pids may belong to others by now
    say(f"PicoAPI cluster demo: data in {show(paths.data)}\n")
    children: list[Child] = []
    code = 0
    try:
        run(children, etcd, paths, args.once)
    except Stop:
        say(f"\n{stop_requested[0]}: stopping the sidecars, the services, the masters, etcd…")
    except ChildFailed as failed:
        child = failed.child
        code = 1
        exited = child.proc.poll()
        state = failed.why or (
            "is not answering" if exited is None else f"exited ({exit_text(exited)})"
        )
        say(f"\ncluster demo: {child.name} (pid {child.proc.pid}): {state}; the end of")
        say(f"{show(child.log)}:")
        for line in tail(child.log, LOG_TAIL, width=300):
            say(f"  | {line}")
        say("stopping the rest…")
    finally:
        # Also on an unexpected error in the demo itself: never leave children behind.
        stopping = time.monotonic()
        forced = stop_all(children)
    if forced:
        say(f"cluster demo: had to SIGKILL {', '.join(forced)}")
    left = [c.name for c in children if c.proc.poll() is None]
    if left:  # not expected: each was waited for, or SIGKILLed and reaped
        say(f"cluster demo: still running: {', '.join(left)}")
        code = code or 1
    else:
        took = time.monotonic() - stopping
        say(f"stopped in {took:.1f}s; nothing the demo started is running")
    return code


if __name__ == "__main__":
    sys.exit(main())
