"""`make demo`: a master, two services that know nothing of us, and a sidecar beside each.

Everything runs on loopback from this checkout, offline: the master on its embedded SQLite
store, `python3 -m http.server` over a static folder, and a Node.js service (where Node is
installed). The sidecars run on copies of configs/demo/*.yaml in the data folder, so
editing them changes no tracked file. Ctrl-C (or SIGTERM) stops the sidecars first (they
deregister), then the services, then the master.

Signals: the demo never blocks any. It catches SIGINT and SIGTERM with a handler that only
sets a flag, and a caught signal is reset to its default in a child at exec, so every child
starts with default dispositions and an empty mask: `kill PID` on a child works. The
children run in sessions of their own, so a Ctrl-C in the terminal reaches only the demo,
which then stops them in order.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOW_TO_RUN = "run `make demo`, or .venv/bin/python deploy/demo.py after `make demo` once"
try:
    import yaml
    from demokit import Stop, exit_text, holder, port_is_taken, say, show, tail
except ImportError as exc:  # a python without the project's dependencies
    sys.exit(f"demo: {exc.name} is not installed for {sys.executable}; {HOW_TO_RUN}")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # picoapi-master and picoapi-sidecar live beside python
CONFIGS = ROOT / "configs" / "demo"
SITE = CONFIGS / "site"
NODE_SERVER = ROOT / "tests" / "service" / "server.js"
HOST = "127.0.0.1"
MASTER_PORT = 9500
MASTER = f"http://{HOST}:{MASTER_PORT}"

# How long each group may take after SIGTERM before it is SIGKILLed. The sidecars promise
# to deregister and exit within 5 s; the services and the master stop at once. The worst
# case, 8.5 s in all, keeps a stop under 10 s; a normal one takes about a second.
STOP_BUDGET = {"sidecar": 5.0, "service": 1.5, "master": 2.0}
LOG_TAIL = 12  # lines of a failed child's log to show
TICK = 0.2  # how often the demo looks at its children and at the stop flag

# Names of the stop signals received. The handler only appends here: the main loop polls
# it, so a signal never interrupts a half-done start or stop.
stop_requested: list[str] = []


class ChildFailed(Exception):
    """A child the demo cannot go on without has exited."""

    def __init__(self, child: Child):
        super().__init__(child.name)
        self.child = child


@dataclass
class Service:
    """One demo service and its sidecar, as its YAML file (the working copy) describes them."""

    name: str  # also the YAML file's stem
    yaml: Path
    port: int
    sidecar_port: int
    service_id: str
    argv: list[str]  # how to start the service itself
    env: dict[str, str]
    about: str  # its line in the startup output


@dataclass
class Child:
    """A process the demo started: its log and pid file are named after it."""

    name: str
    role: str  # "master", "service" or "sidecar": the order they stop in is sidecar first
    proc: subprocess.Popen[bytes]
    log: Path
    pid_file: Path
    reported: bool = False  # a service's exit has been told to the user already


# --- output ------------------------------------------------------------------------------


def table(services: list[dict[str, Any]]) -> str:
    rows = [("ID", "ADDRESS", "STATUS", "TAGS", "OPENAPI")]
    for s in services:
        rows.append(
            (
                str(s["id"]),
                f"{s['address']}:{s['port']}",
                str(s["status"]),
                ",".join(s["tags"]),
                "yes" if s["openapi_sha256"] else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


# --- the plan ----------------------------------------------------------------------------


def copy_configs(work: Path) -> None:
    """Fresh copies at each start, so an edit from the last run does not linger; and no
    pid file left by a demo that was killed (its pids may belong to others by now)."""
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob("*.pid"):
        stale.unlink()
    for source in sorted(CONFIGS.glob("*.yaml")):
        shutil.copyfile(source, work / source.name)


def service(work: Path, name: str) -> Service:
    """The service `name`, its ports and id read from its YAML copy: one source of truth."""
    path = work / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    port = int(data["service"]["port"])
    listen = str(data["sidecar"]["listen"])
    sidecar_port = int(listen.rsplit(":", 1)[1])
    service_id = str(data["service"]["id"])
    return Service(name, path, port, sidecar_port, service_id, [], {}, "")


def plan(work: Path, node: str | None) -> list[Service]:
    site = service(work, "static-site")
    site.argv = [
        *(sys.executable, "-m", "http.server", str(site.port)),
        *("--bind", HOST, "--directory", str(SITE)),
    ]
    site.about = f"python3 -m http.server {site.port}, serving {show(SITE)}"
    if not node:
        return [site]
    api = service(work, "node-api")
    api.argv = [node, str(NODE_SERVER), str(api.port)]
    api.env = {"HOST": HOST}
    api.about = f"node {show(NODE_SERVER)} {api.port}"
    return [site, api]


def ports(services: list[Service]) -> Iterator[tuple[int, str]]:
    yield MASTER_PORT, "master"
    for s in services:
        yield s.port, s.name
        yield s.sidecar_port, f"sidecar-{s.name}"


def check_ports(services: list[Service]) -> bool:
    taken = [(port, who) for port, who in ports(services) if port_is_taken(port)]
    if not taken:
        return True
    say("demo: cannot start, these ports are taken:")
    for port, who in taken:
        by = holder(port)
        say(f"  {HOST}:{port}  needed by {who}" + (f"; in use by {by}" if by else ""))
    say("Stop whatever holds them (an earlier demo still running?) and try again.")
    return False


# --- children ----------------------------------------------------------------------------


def start(
    children: list[Child],
    name: str,
    role: str,
    argv: list[str],
    paths: Paths,
    about: str,
    **env: str,
) -> Child:
    log = paths.logs / f"{name}.log"
    with open(log, "wb") as out:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "PICOAPI_LOG_FORMAT": "json", **env},
            # Its own session: the terminal's Ctrl-C reaches only the demo, which stops the
            # children in order (sidecars before the master they deregister from).
            start_new_session=True,
        )
    pid_file = paths.work / f"{name}.pid"
    pid_file.write_text(f"{proc.pid}\n")
    child = Child(name, role, proc, log, pid_file)
    children.append(child)
    say(f"  {name:<20} pid {proc.pid:<7}  {about}")
    return child


def watch(children: list[Child], ready: bool) -> None:
    """Raise Stop on a stop signal, ChildFailed when a child exits that the demo needs.

    Once the demo is up (`ready`), a service may exit (the walk-through stops one): that is
    told and the demo goes on, because showing it turn critical is the point."""
    if stop_requested:
        raise Stop
    for child in children:
        code = child.proc.poll()
        if code is None or child.reported:
            continue
        if child.role == "service" and ready:
            child.reported = True
            say(f"\ndemo: {child.name} (pid {child.proc.pid}) exited ({exit_text(code)}).")
            say("      Its sidecar keeps it registered; the master marks it critical at its")
            say("      next check. The rest runs on until Ctrl-C.")
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


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as answer:
        return json.load(answer)


def wait_for_master(children: list[Child], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            get_json(f"{MASTER}/healthz")
            return
        except (OSError, ValueError):
            pause(children, TICK)
    raise ChildFailed(children[0])  # alive but not answering: told as such, with its log


def wait_for_passing(
    children: list[Child], ids: set[str], seconds: float = 20.0
) -> tuple[list[dict[str, Any]], bool]:
    """The registry's listing once every one of `ids` is passing (or as it is at the end)."""
    deadline = time.monotonic() + seconds
    listing: list[dict[str, Any]] = []
    while True:
        try:
            listing = get_json(f"{MASTER}/v1/services")["services"]
        except (OSError, ValueError, KeyError, TypeError):
            listing = []
        passing = {s["id"] for s in listing if s["status"] == "passing"}
        if ids <= passing:
            return listing, True
        if time.monotonic() >= deadline:
            return listing, False
        pause(children, 0.3)


def stop_all(children: list[Child]) -> list[str]:
    """SIGTERM the sidecars, then the services, then the master, waiting (bounded) for each
    group before the next, so the sidecars deregister while the master still answers.
    Returns the names that had to be SIGKILLed."""
    forced = []
    for role in ("sidecar", "service", "master"):
        group = [c for c in children if c.role == role]
        for child in group:
            if child.proc.poll() is None:
                child.proc.terminate()
        budget = STOP_BUDGET[role]
        deadline = time.monotonic() + budget
        for child in group:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(
                    f"demo: {child.name} (pid {child.proc.pid}) did not stop within {budget:g}s "
                    "of SIGTERM: killing it (SIGKILL)"
                )
                child.proc.kill()
                child.proc.wait()
                forced.append(child.name)
            child.pid_file.unlink(missing_ok=True)
    return forced


# --- main --------------------------------------------------------------------------------


@dataclass
class Paths:
    """Everything the demo writes, under --data-dir."""

    data: Path  # registry.db
    work: Path  # the YAML copies and the pid files
    logs: Path

    @classmethod
    def under(cls, data: Path) -> Paths:
        data = data.resolve()
        return cls(data, data / "demo", data / "demo-logs")


def on_signal(signum: int, _frame: object) -> None:
    stop_requested.append(signal.Signals(signum).name)


def catch_stop_signals() -> None:
    """Before any child starts: catching (not blocking) is what keeps the children's
    signals at their defaults."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    # A closed terminal would kill the demo and leave its children (in their own sessions)
    # running: stop them instead. Unless the user ran us under nohup, which means "ignore".
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, on_signal)


def run(children: list[Child], services: list[Service], paths: Paths) -> None:
    """Start everything and wait for a stop signal (Stop) or a lost child (ChildFailed)."""
    master_argv = [
        *(str(BIN / "picoapi-master"), "--listen", f"{HOST}:{MASTER_PORT}"),
        *("--store", f"sqlite:///{paths.data / 'registry.db'}"),
    ]
    about = f"picoapi-master on {HOST}:{MASTER_PORT}, registry {show(paths.data / 'registry.db')}"
    start(children, "master", "master", master_argv, paths, about)
    for s in services:
        start(children, s.name, "service", s.argv, paths, s.about, **s.env)
    wait_for_master(children)
    for s in services:
        argv = [str(BIN / "picoapi-sidecar"), "run", str(s.yaml)]
        about = f"picoapi-sidecar run {show(s.yaml)}"
        start(children, f"sidecar-{s.name}", "sidecar", argv, paths, about)

    listing, all_passing = wait_for_passing(children, {s.service_id for s in services})
    say("\nRegistered:\n" + table(listing))
    if not all_passing:
        say(f"  (not all passing yet; the logs are in {show(paths.logs)})")
    others = sorted({s["id"] for s in listing} - {s.service_id for s in services})
    if others:
        # From an earlier run whose sidecars could not deregister (or from another user).
        say(f"  (not from this run: {', '.join(others)}; the master drops a critical one")
        say("   after its deregister_after)")
    say(f"\nDashboard:  {MASTER}/")
    say(f"API:        {MASTER}/v1/services   (description: {MASTER}/openapi.json)")
    say(f"Edit:       {show(services[0].yaml)} (the sidecar follows it; a fresh copy of")
    say(f"            {show(CONFIGS)}/ at each start, so no tracked file changes)")
    say(f"Pids, logs: {show(paths.work)}/*.pid, {show(paths.logs)}/*.log")
    say("\nCtrl-C stops everything: the sidecars first (they deregister), then the services")
    say("and the master.")
    while True:
        pause(children, 3600, ready=True)


USAGE = """\
Run the PicoAPI demo on loopback, offline, from this checkout:

  master               127.0.0.1:9500  picoapi-master, its registry in DIR/registry.db
  static-site          127.0.0.1:8081  python3 -m http.server over configs/demo/site
  node-api             127.0.0.1:8082  tests/service/server.js (where Node.js is installed)
  sidecar-static-site  127.0.0.1:9601  picoapi-sidecar run DIR/demo/static-site.yaml
  sidecar-node-api     127.0.0.1:9602  picoapi-sidecar run DIR/demo/node-api.yaml

The sidecars run on copies of configs/demo/*.yaml, made afresh at each start: edit
those. The demo prints each process's pid (also in DIR/demo/NAME.pid) and the services
as registered, then runs until Ctrl-C or SIGTERM.
"""

EPILOG = """\
Ctrl-C (or SIGTERM) stops the sidecars first, so they deregister, then the services,
then the master; it takes a second or two. A service that exits is reported and the demo
goes on (the master marks it critical). If the master or a sidecar exits, the demo shows
the end of its log and stops the rest.

exit status: 0 after Ctrl-C or SIGTERM; 1 if a port is taken, or the master or a
sidecar exited; 2 on a bad option
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy/demo.py",
        description=USAGE,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        default=ROOT / "picoapi-data",
        help=(
            "the registry, the logs (DIR/demo-logs/), the YAML copies and pid files "
            "(DIR/demo/); default: picoapi-data in the checkout (ignored by git)"
        ),
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [n for n in ("picoapi-master", "picoapi-sidecar") if not (BIN / n).exists()]
    if missing:
        say(f"demo: no {' or '.join(missing)} next to {sys.executable}; {HOW_TO_RUN}")
        return 1
    catch_stop_signals()
    paths = Paths.under(args.data_dir)
    paths.logs.mkdir(parents=True, exist_ok=True)
    copy_configs(paths.work)
    services = plan(paths.work, shutil.which("node"))
    if not check_ports(services):
        return 1
    say(f"PicoAPI demo: data in {show(paths.data)}")
    if len(services) == 1:
        say("  (no Node.js here: the second service, node-api, is left out)")
    children: list[Child] = []
    code = 0
    try:
        run(children, services, paths)
    except Stop:
        say(f"\n{stop_requested[0]}: stopping the sidecars, then the services and the master…")
    except ChildFailed as failed:
        child = failed.child
        code = 1
        exited = child.proc.poll()
        state = "is not answering" if exited is None else f"exited ({exit_text(exited)})"
        say(f"\ndemo: {child.name} (pid {child.proc.pid}) {state}; the end of {show(child.log)}:")
        for line in tail(child.log, LOG_TAIL):
            say(f"  | {line}")
        say("stopping the rest…")
    finally:
        # Also on an unexpected error in the demo itself: never leave children behind.
        forced = stop_all(children)
    if forced:
        say(f"demo: had to SIGKILL {', '.join(forced)}; a killed sidecar does not deregister")
    say(f"stopped; the registry is kept in {show(paths.data / 'registry.db')}")
    return code


if __name__ == "__main__":
    sys.exit(main())
