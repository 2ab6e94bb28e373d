"""The chaos harness: a master, N small Node.js services and a sidecar beside each, while a
bounded, seeded loop breaks things; what must hold throughout and afterwards is checked.

    .venv/bin/python -m tests.chaos --duration 600        # what `make soak` runs
    .venv/bin/python -m tests.chaos --help

tests/test_chaos.py runs it for about two minutes in `make test`.

What it starts (every process stopped by its pid at the end, also on failure):
- the master on `sqlite:////<workdir>/registry.db`, always at the same loopback port (picked
  once), so the sidecars keep one master URL across its restarts; its descriptor limit is
  set to `--master-nofile` (1024, a common container default) so that a bounded burst of
  connections can exhaust it;
- N services: tests/service/server.js (Node.js, not Python), each on a port of its own;
- N sidecars, one YAML each in the work directory: an http check of the service every 1 s,
  resync 2 s, deregister_after 0 (the chaos itself must reap nothing).

The chaos (seeded, bounded by event count and wall time; every kind at least once):
- `master_kill`: SIGKILL the master, restart it on the same store and port;
- `sidecar_stop`: SIGSTOP a sidecar for 1-5 s, then SIGCONT;
- `service_kill`: SIGKILL a service, restart it on its port 1-6 s later;
- `yaml_good`: a new tag in a sidecar's YAML (atomic rename or rewritten in place);
- `yaml_bad`: an invalid YAML (bad port, unknown key, broken syntax), a good one 2-6 s later;
- `fd_burst`: many idle TCP connections and blocking queries (`?index=N&wait=60s`) to the
  master, past its descriptor limit up to `--burst` sockets, held 3-6 s, then closed.
Beside it, a probe registers and deletes ids of its own (`probe-K`, tagged with a sequence
number), one request at a time; every answer 200 is an acknowledged state.

Checked throughout: after every master restart, every acknowledged probe state is there
(a request that got no answer leaves either outcome acceptable until the next answer); no
sidecar exits; the master never exits unless killed. Observed and reported, not failed:
a service marked critical while it, its sidecar and the master were all fine ("spurious",
by what was going on: a descriptor burst, a master restart, nothing).

Afterwards (chaos stopped, everything running): within one resync plus one interval plus
`SLACK`, the registry holds exactly the N services and the probe's live ids, each service
with the tags of its current YAML and passing; then three services are killed, and exactly
those turn critical; they come back and pass again. The master's and each sidecar's
descriptors (/proc/PID/fd) and RSS at the end are within `FD_GROWTH` and `RSS_GROWTH` of
their values after warm-up (the master's: the process running then and the one at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
BIN: Final = Path(sys.executable).parent
SERVER_JS: Final = ROOT / "tests" / "service" / "server.js"

RESYNC: Final = 2.0  # sidecar.resync
INTERVAL: Final = 1.0  # check.interval
TIMEOUT: Final = 0.5  # check.timeout
SLACK: Final = 6.0  # on top of one resync plus one interval, for the final convergence
GRACE: Final = INTERVAL + TIMEOUT + 2.5  # after a disturbance ends, before critical is news
FD_GROWTH: Final = 20
RSS_GROWTH: Final = 0.30
MAX_STOPPED: Final = 5  # sidecars stopped at once, at most
MAX_DOWN: Final = 5  # services down at once, at most
PROBE_IDS: Final = 16
HTTP_TIMEOUT: Final = 5.0
START_TIMEOUT: Final = 20.0
KINDS: Final = (
    "master_kill",
    "sidecar_stop",
    "service_kill",
    "yaml_good",
    "yaml_bad",
    "fd_burst",
)
WEIGHTS: Final = {
    "master_kill": 2.0,
    "sidecar_stop": 3.0,
    "service_kill": 3.0,
    "yaml_good": 2.0,
    "yaml_bad": 2.0,
    "fd_burst": 1.0,
}


class ChaosError(RuntimeError):
    """The harness could not set the scene up (a process would not start)."""


# --- processes ---------------------------------------------------------------------------


class Proc:
    """One process the harness started, its output in a log file; stopped by its pid."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False  # SIGSTOPped by us
        self.killed = False  # SIGKILLed by us, not restarted yet
        self._offset = 0  # where this incarnation's log starts

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.cwd),
                start_new_session=True,  # a Ctrl-C of `make soak` reaches us, not them
            )
        self.stopped = self.killed = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def send(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.killed = True

    def terminate(self) -> None:
        """SIGCONT (it may be stopped) and SIGTERM; `reap` waits for it."""
        if self.alive():
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGTERM)

    def reap(self, timeout: float = 8.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(5)

    def log_text(self, this_run_only: bool = True) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._offset if this_run_only else 0)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 2500) -> str:
        return self.log_text(this_run_only=False)[-chars:]

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log_text().splitlines():
            if f'"{name}"' not in line:
                continue
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    found.append(event)
        return found

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            if not self.alive():
                raise ChaosError(
                    f"{self.name} exited ({self.returncode()}) before {text!r}:\n" + self.log_tail()
                )
            time.sleep(0.05)
        raise ChaosError(f"{self.name}: no {text!r} within {timeout}s:\n{self.log_tail()}")

    def fds(self) -> int | None:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None

    def rss_kib(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports nothing listens on (held together while chosen)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


# --- HTTP --------------------------------------------------------------------------------


def http_call(
    port: int, method: str, path: str, body: Any = None, timeout: float = HTTP_TIMEOUT
) -> tuple[int, Any]:
    """(status, JSON body or None); OSError (and http.client errors) if nothing answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        answer = conn.getresponse()
        raw = answer.read()
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            value = None
        return answer.status, value
    finally:
        conn.close()


NO_ANSWER: Final = (OSError, http.client.HTTPException)


# --- the probe: its own acknowledged writes ---------------------------------------------


class Probe(threading.Thread):
    """Registers and deletes `probe-K`, one request at a time, and keeps, for each id, the
    states the master may hold: one after an answer, two after a request nobody answered.
    Absent is None; present is the sequence number in its tag."""

    def __init__(self, port: int, rng: random.Random) -> None:
        super().__init__(name="chaos-probe", daemon=True)
        self.port = port
        self.rng = rng
        self.lock = threading.Lock()  # held for each request, and by a verification
        self.expected: dict[str, set[int | None]] = {f"probe-{k}": {None} for k in range(PROBE_IDS)}
        self.counts: Counter[str] = Counter()
        self.seq = 0
        self._unanswered: tuple[str, str, dict[str, Any] | None, int | None] | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(15)

    def run(self) -> None:
        while not self._halt.is_set():
            with self.lock:
                answered = self.step()
            self._halt.wait(self.rng.uniform(0.02, 0.12) if answered else 0.2)

    def step(self) -> bool:
        """One request: the one that got no answer last time, again, or a new one; False if
        this one got none either (a PUT or DELETE sent again changes nothing more)."""
        if self._unanswered is None:
            ident = f"probe-{self.rng.randrange(PROBE_IDS)}"
            if self.rng.random() < 0.7:
                self.seq += 1
                body: dict[str, Any] | None = {
                    "id": ident,
                    "name": "probe",
                    "address": "127.0.0.1",
                    "port": 9,
                    "tags": [f"seq-{self.seq}"],
                }
                self._unanswered = (ident, "PUT", body, self.seq)
            else:
                self._unanswered = (ident, "DELETE", None, None)
        ident, method, body, outcome = self._unanswered
        try:
            status, _ = http_call(self.port, method, f"/v1/services/{ident}", body)
        except NO_ANSWER:
            status = 0
        if status == 200 or (method == "DELETE" and status == 404):
            self.expected[ident] = {outcome}
            self.counts[f"acked_{method.lower()}"] += 1
        elif status == 0 or status >= 500:
            self.expected[ident] = self.expected[ident] | {outcome}
            self.counts["unanswered" if status == 0 else f"answered_{status}"] += 1
            return False
        else:
            self.counts[f"refused_{status}"] += 1  # a 4xx: nothing changed
        self._unanswered = None
        return True

    def live_ids(self) -> dict[str, set[int | None]]:
        return {k: set(v) for k, v in self.expected.items()}


def probe_state(records: list[dict[str, Any]]) -> dict[str, int | None]:
    state: dict[str, int | None] = {}
    for record in records:
        if record.get("name") == "probe":
            seq = [t for t in record.get("tags", []) if t.startswith("seq-")]
            state[record["id"]] = int(seq[0][4:]) if seq else -1
    return state


# --- descriptor bursts -------------------------------------------------------------------


class Burst:
    """Idle connections and blocking queries to the master, mixed in a seeded order, opened
    without waiting for the master to accept them, held, then closed."""

    def __init__(self, port: int, idle: int, blocking: int, index: int, rng: random.Random):
        self.port = port
        # Blocking queries at the index now wake at the next write (and, answered, hold a
        # kept-alive connection); those at an index far ahead hold a watcher for the wait.
        far = blocking // 2
        self.kinds = ["idle"] * idle + ["blocking"] * (blocking - far) + ["watching"] * far
        rng.shuffle(self.kinds)
        self.index = index
        self.socks: list[tuple[socket.socket, str]] = []
        self.connected: set[socket.socket] = set()
        self.stats: Counter[str] = Counter()
        self.started = time.monotonic()

    def open(self, connect_time: float = 3.0) -> None:
        """Connect them all; send each blocking one its query once it is connected."""
        requests = {
            kind: (
                f"GET /v1/services?index={index}&wait=60s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            ).encode()
            for kind, index in (("blocking", self.index), ("watching", self.index + 10**9))
        }
        selector = selectors.DefaultSelector()
        try:
            for kind in self.kinds:
                try:
                    sock = socket.socket()
                except OSError:
                    self.stats["no socket here (our own limit)"] += 1
                    break
                sock.setblocking(False)
                self.socks.append((sock, kind))
                code = sock.connect_ex(("127.0.0.1", self.port))
                if code not in (0, errno.EINPROGRESS):
                    self.stats[f"{kind} connect error {errno.errorcode.get(code, code)}"] += 1
                    continue
                selector.register(sock, selectors.EVENT_WRITE, kind)
            deadline = time.monotonic() + connect_time
            while selector.get_map() and time.monotonic() < deadline:
                for key, _ in selector.select(0.2):
                    sock = key.fileobj  # type: ignore[assignment]
                    selector.unregister(sock)
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                        continue
                    self.connected.add(sock)
                    if key.data in requests:
                        try:
                            sock.send(requests[key.data])
                        except OSError:
                            self.stats["blocking send failed"] += 1
        finally:
            selector.close()
        self.stats["opened"] = len(self.socks)
        self.stats["connected"] = len(self.connected)

    def release(self) -> Counter[str]:
        """Say what became of each socket (answered with a status, closed or reset by the
        master, never connected, still open), then close them all."""
        for sock, kind in self.socks:
            self.stats[f"{kind} {_fate(sock, sock in self.connected)}"] += 1
        self.close()
        self.stats["held_s"] = round(time.monotonic() - self.started)
        return self.stats

    def close(self) -> None:
        for sock, _ in self.socks:
            sock.close()
        self.socks.clear()


def _fate(sock: socket.socket, connected: bool) -> str:
    answer = b""
    try:
        while True:
            chunk = sock.recv(65536, socket.MSG_DONTWAIT)
            if not chunk:
                break
            answer += chunk
        end = "closed by the master"
    except BlockingIOError:
        end = "open"
    except ConnectionResetError:
        end = "reset by the master"
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            end = f"error {errno.errorcode.get(exc.errno or 0, exc.errno)}"
        else:  # reset earlier (the error already taken), or never connected
            end = "reset by the master" if connected else "never connected"
    if answer.startswith(b"HTTP/"):
        return f"answered {answer.split(b' ', 2)[1].decode(errors='replace')}, {end}"
    return f"unanswered, {end}"


# --- the report --------------------------------------------------------------------------


@dataclass
class Report:
    seed: int
    duration: float
    services: int
    events: Counter[str] = field(default_factory=Counter)
    chaos_seconds: float = 0.0
    probe: Counter[str] = field(default_factory=Counter)
    verifications: int = 0
    id_checks: int = 0  # ids compared with what the probe was told, at each verification
    id_checks_uncertain: int = 0  # of those, ids whose last request got no answer
    lost: list[str] = field(default_factory=list)
    sidecar_exits: list[str] = field(default_factory=list)
    master_crashes: list[str] = field(default_factory=list)
    spurious: Counter[str] = field(default_factory=Counter)
    spurious_samples: list[str] = field(default_factory=list)
    bursts: list[dict[str, Any]] = field(default_factory=list)
    master_fds_peak: int = 0
    bad_edits: int = 0
    rejections_logged: int = 0
    convergence_s: float | None = None
    convergence_bound_s: float = RESYNC + INTERVAL + SLACK
    resources: list[tuple[str, int | None, int | None, int | None, int | None]] = field(
        default_factory=list
    )
    master_log: Counter[str] = field(default_factory=Counter)
    sidecar_log: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [
            f"chaos: seed {self.seed}, {self.services} services, "
            f"{sum(self.events.values())} events in {self.chaos_seconds:.0f} s "
            f"(asked {self.duration:.0f} s)",
            "  events: " + ", ".join(f"{k} {self.events[k]}" for k in KINDS),
            "  probe: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.probe.items()))
            + f"; verified {self.verifications} times: {self.id_checks} ids checked "
            f"({self.id_checks - self.id_checks_uncertain} in an acknowledged state, "
            f"{self.id_checks_uncertain} either of two after a request with no answer), "
            f"{len(self.lost)} lost",
            f"  sidecars exited: {len(self.sidecar_exits)}; "
            f"master exited by itself: {len(self.master_crashes)}",
            f"  bad YAML edits: {self.bad_edits}, config_rejected logged: {self.rejections_logged}",
            "  spurious critical (service, sidecar and master fine): "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.spurious.items())) or "none"),
            f"  master descriptors at the peak of a burst: {self.master_fds_peak}",
        ]
        for n, burst in enumerate(self.bursts):
            lines.append(f"  burst {n}: " + "; ".join(f"{k} {v}" for k, v in sorted(burst.items())))
        converged = "never" if self.convergence_s is None else f"{self.convergence_s:.1f} s"
        lines.append(
            f"  converged after the chaos in {converged} (bound {self.convergence_bound_s:.1f} s)"
        )
        lines.append(
            f"  {'process':12} {'fds warm':>9} {'fds end':>8} {'RSS warm':>9} {'RSS end':>8}"
        )
        for name, fd0, fd1, rss0, rss1 in self.resources:
            growth = f"{(rss1 - rss0) / rss0:+.0%}" if rss0 and rss1 else "?"
            lines.append(
                f"  {name:12} {fd0!s:>9} {fd1!s:>8} {_mib(rss0):>9} {_mib(rss1):>8}  {growth}"
            )
        for who, counts in (("master", self.master_log), ("sidecars", self.sidecar_log)):
            top = ", ".join(f"{k} x{v}" for k, v in counts.most_common(8)) or "nothing"
            lines.append(f"  {who} logged (warning and above): {top}")
        for sample in self.spurious_samples[:10]:
            lines.append(f"  spurious: {sample}")
        lines.append(f"  problems: {len(self.problems)}")
        lines += [f"    - {p}" for p in self.problems]
        return "\n".join(lines)


def log_summary(text: str) -> Counter[str]:
    """`event (level)` of each line at warning or above, and lines that are not JSON."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            counts["a line that is not JSON"] += 1
            continue
        if isinstance(event, dict) and event.get("level") not in ("debug", "info"):
            counts[f"{event.get('event')} ({event.get('level')})"] += 1
    return counts


def _mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f}M"


# --- the harness -------------------------------------------------------------------------


class Harness:
    def __init__(
        self,
        workdir: Path,
        *,
        services: int = 20,
        seed: int = 1,
        master_nofile: int = 1024,
        burst: int = 1400,
    ) -> None:
        if shutil.which("node") is None:
            raise ChaosError("node (Node.js) is not installed: the services are server.js")
        self.workdir = workdir
        self.count = services
        self.rng = random.Random(seed)
        self.master_nofile = master_nofile
        self.burst_size = burst
        self.report = Report(seed=seed, duration=0, services=services)
        ports = free_ports(1 + 2 * services)
        self.master_port = ports[0]
        self.service_ports = ports[1 : 1 + services]
        self.sidecar_ports = ports[1 + services :]
        self.ids = [f"chaos-{i:02d}" for i in range(services)]
        self.master = self._master_proc()
        self.services = [self._service_proc(i) for i in range(services)]
        self.sidecars = [self._sidecar_proc(i) for i in range(services)]
        self.gen = [0] * services
        self.tags: list[list[str]] = [[] for _ in range(services)]
        self.yaml_bad = [False] * services
        self.pending: list[tuple[float, str, Callable[[], None]]] = []
        self.disturbed_until = [0.0] * services  # time.monotonic(); inf while disturbed
        self.burst: Burst | None = None
        self.burst_window = (0.0, 0.0)
        self.master_restarted_at = 0.0
        self.probe = Probe(self.master_port, random.Random(seed + 1))
        self._observe_stop = threading.Event()
        self._observer = threading.Thread(target=self._observe, name="chaos-observer", daemon=True)
        self.baseline: dict[str, tuple[int | None, int | None]] = {}

    # --- the processes ---

    def _master_proc(self) -> Proc:
        argv = [
            str(BIN / "picoapi-master"),
            "--listen",
            f"127.0.0.1:{self.master_port}",
            "--log-format",
            "json",
            "--store",
            f"sqlite:///{self.workdir.resolve()}/registry.db",
        ]
        if self.master_nofile:  # `exec` keeps the pid: the shell becomes the master
            argv = [
                "sh",
                "-c",
                'ulimit -n "$1" && shift && exec "$@"',
                "sh",
                str(self.master_nofile),
                *argv,
            ]
        return Proc("master", argv, self.workdir / "master.log", self.workdir)

    def _service_proc(self, i: int) -> Proc:
        node = shutil.which("node") or "node"
        argv = [node, str(SERVER_JS), str(self.service_ports[i]), f"picoapi-chaos-{i}"]
        return Proc(f"service-{i:02d}", argv, self.workdir / f"service-{i:02d}.log", self.workdir)

    def _sidecar_proc(self, i: int) -> Proc:
        argv = [str(BIN / "picoapi-sidecar"), "--log-format", "json", "run", str(self._yaml(i))]
        return Proc(f"sidecar-{i:02d}", argv, self.workdir / f"sidecar-{i:02d}.log", self.workdir)

    def _yaml(self, i: int) -> Path:
        return self.workdir / f"chaos-{i:02d}.yaml"

    def _yaml_text(
        self, i: int, tags: list[str], *, port: str | None = None, extra: str = ""
    ) -> str:
        return f"""\
service:
  name: chaos
  id: {self.ids[i]}
  address: 127.0.0.1
  port: {port or self.service_ports[i]}
  tags: [{", ".join(tags)}]
  openapi: /openapi.json
check:
  http: /healthz
  interval: {INTERVAL:g}s
  timeout: {int(TIMEOUT * 1000)}ms
  deregister_after: 0
master:
  url: http://127.0.0.1:{self.master_port}
sidecar:
  listen: 127.0.0.1:{self.sidecar_ports[i]}
  advertise: 127.0.0.1:{self.sidecar_ports[i]}
  resync: {RESYNC:g}s
{extra}"""

    def _write(self, i: int, text: str) -> None:
        path = self._yaml(i)
        if path.exists() and self.rng.random() < 0.3:
            path.write_text(text)  # in place, as an editor without rename does
        else:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

    def _write_good(self, i: int) -> None:
        self.gen[i] += 1
        self.tags[i] = ["chaos", f"svc-{i:02d}", f"gen-{self.gen[i]}"]
        self._write(i, self._yaml_text(i, self.tags[i]))
        self.yaml_bad[i] = False

    def _write_bad(self, i: int) -> None:
        tags = ["chaos", "never-seen"]
        bad = self.rng.choice(["port", "word", "unknown", "syntax"])
        if bad == "port":
            text = self._yaml_text(i, tags, port="70000")
        elif bad == "word":
            text = self._yaml_text(i, tags, port="eighty")
        elif bad == "unknown":
            text = self._yaml_text(i, tags, extra="colour: red\n")
        else:
            text = self._yaml_text(i, tags).replace("]", "", 1)  # an unclosed [ list
        self._write(i, text)
        self.yaml_bad[i] = True
        self.report.bad_edits += 1

    def start_master(self) -> None:
        for attempt in range(3):
            self.master.start()
            try:
                self.master.wait_for('"master_started"')
                self.master_restarted_at = time.monotonic()
                return
            except ChaosError:
                # The port may still be held a moment; a master that cannot start is news.
                if attempt == 2 or "master_started" in self.master.log_text():
                    raise
                self.master.kill()
                time.sleep(0.5)

    def start_service(self, i: int) -> None:
        self.services[i].start()
        self.services[i].wait_for("LISTENING")

    def setup(self) -> None:
        self.start_master()
        for service in self.services:
            service.start()
        for i, service in enumerate(self.services):
            service.wait_for("LISTENING")
            self._write_good(i)
        for sidecar in self.sidecars:
            sidecar.start()
        for sidecar in self.sidecars:
            sidecar.wait_for('"sidecar_started"', timeout=60)

    # --- what the master says ---

    def records(self, name: str | None = None) -> list[dict[str, Any]] | None:
        path = "/v1/services" + (f"?name={name}" if name else "")
        try:
            status, body = http_call(self.master_port, "GET", path, timeout=3.0)
        except NO_ANSWER:
            return None
        if status != 200 or not isinstance(body, dict):
            return None
        services: list[dict[str, Any]] = body.get("services", [])
        return services

    def mismatches(self, down: frozenset[int] = frozenset()) -> list[str]:
        """How the registry differs from reality: services `down` must be critical."""
        records = self.records()
        if records is None:
            return ["the master did not answer GET /v1/services"]
        found = {r["id"]: r for r in records}
        wrong = []
        probe_live = {k for k, v in self.probe.live_ids().items() if None not in v}
        probe_maybe = {k for k, v in self.probe.live_ids().items() if len(v - {None}) > 0}
        expected = set(self.ids) | probe_live
        allowed = expected | probe_maybe
        for ident in sorted(expected - set(found)):
            wrong.append(f"{ident} is missing")
        for ident in sorted(set(found) - allowed):
            wrong.append(f"{ident} is there and should not be")
        for i, ident in enumerate(self.ids):
            record = found.get(ident)
            if record is None:
                continue
            want = "critical" if i in down else "passing"
            if record.get("tags") != self.tags[i]:
                wrong.append(f"{ident}: tags {record.get('tags')} instead of {self.tags[i]}")
            if record.get("status") != want:
                wrong.append(f"{ident}: {record.get('status')} instead of {want}")
            if record.get("port") != self.service_ports[i]:
                wrong.append(f"{ident}: port {record.get('port')}")
        state = probe_state(records)
        for ident, states in self.probe.live_ids().items():
            if state.get(ident) not in states:
                wrong.append(f"{ident}: {state.get(ident)} instead of one of {states}")
        return wrong

    def verify_probe(self, reason: str) -> None:
        """Every acknowledged probe state is at the master (the probe waits meanwhile)."""
        with self.probe.lock:
            records = None
            deadline = time.monotonic() + 10
            while records is None and time.monotonic() < deadline:
                records = self.records("probe")
                if records is None:
                    time.sleep(0.2)
            if records is None:
                self.report.problems.append(
                    f"probe check after {reason}: the master did not answer"
                )
                return
            state = probe_state(records)
            self.report.verifications += 1
            for ident, states in self.probe.live_ids().items():
                self.report.id_checks += 1
                self.report.id_checks_uncertain += len(states) > 1
                if state.get(ident) not in states:
                    self.report.lost.append(
                        f"after {reason}: {ident} is {state.get(ident)}, acknowledged {states}"
                    )

    # --- watching statuses ---

    def _observe(self) -> None:
        while not self._observe_stop.wait(0.5):
            records = self.records("chaos")
            if records is None:
                continue
            now = time.monotonic()
            for record in records:
                if record.get("status") != "critical" or record["id"] not in self.ids:
                    continue
                i = self.ids.index(record["id"])
                if now < self.disturbed_until[i]:
                    continue
                start, end = self.burst_window
                if start <= now <= end + GRACE:
                    context = "during a descriptor burst"
                elif now - self.master_restarted_at < GRACE + 2:
                    context = "after a master restart"
                else:
                    context = "nothing going on"
                self.report.spurious[context] += 1
                if len(self.report.spurious_samples) < 40:
                    output = (record.get("last_check") or {}).get("output", "")
                    self.report.spurious_samples.append(
                        f"{record['id']} {context}: {str(output)[:160]!r}"
                    )

    def _disturb(self, i: int) -> None:
        self.disturbed_until[i] = float("inf")

    def _settled(self, i: int) -> None:
        if not (self.sidecars[i].stopped or self.services[i].killed):
            self.disturbed_until[i] = time.monotonic() + GRACE

    # --- resources ---

    def sample(self) -> dict[str, tuple[int | None, int | None]]:
        """Descriptors and RSS of the master and each sidecar: the least of three looks a
        second apart, so a connection in passing is not counted as growth."""
        looks: dict[str, list[tuple[int | None, int | None]]] = {}
        for _ in range(3):
            for proc in [self.master, *self.sidecars]:
                looks.setdefault(proc.name, []).append((proc.fds(), proc.rss_kib()))
            time.sleep(1)
        least: dict[str, tuple[int | None, int | None]] = {}
        for name, values in looks.items():
            fds = [v[0] for v in values if v[0] is not None]
            rss = [v[1] for v in values if v[1] is not None]
            least[name] = (min(fds) if fds else None, min(rss) if rss else None)
        return least

    # --- the chaos ---

    def warm_up(self) -> None:
        deadline = time.monotonic() + 60 + self.count
        wrong = self.mismatches()
        while wrong and time.monotonic() < deadline:
            time.sleep(0.5)
            wrong = self.mismatches()
        if wrong:
            raise ChaosError("not all registered and passing after start: " + "; ".join(wrong[:10]))
        time.sleep(RESYNC * 2)  # a couple of resyncs: connections and caches in place
        self.baseline = self.sample()

    def _later(self, delay: float, what: str, action: Callable[[], None]) -> None:
        self.pending.append((time.monotonic() + delay, what, action))

    def _run_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        due = [p for p in self.pending if everything or p[0] <= now]
        self.pending = [p for p in self.pending if p not in due]
        for _, _, action in sorted(due, key=lambda p: p[0]):
            action()

    def _check_processes(self) -> None:
        for sidecar in self.sidecars:
            if sidecar.proc is not None and not sidecar.alive() and not sidecar.killed:
                sidecar.killed = True  # reported once
                self.report.sidecar_exits.append(
                    f"{sidecar.name} exited ({sidecar.returncode()}):\n{sidecar.log_tail(1500)}"
                )
        if not self.master.alive() and not self.master.killed:
            self.report.master_crashes.append(
                f"the master exited ({self.master.returncode()}) unasked:\n"
                + self.master.log_tail()
            )
            self.start_master()
        if self.burst is not None:
            fds = self.master.fds() or 0
            self.report.master_fds_peak = max(self.report.master_fds_peak, fds)

    def _event(self, kind: str) -> bool:
        """Do one event of `kind`; False if none of that kind can be done now."""
        rng = self.rng
        if kind == "master_kill":
            self.master.kill()
            time.sleep(rng.uniform(0, 3))
            self.start_master()
            self.verify_probe("a master SIGKILL and restart")
            return True
        if kind == "sidecar_stop":
            free = [i for i, s in enumerate(self.sidecars) if not s.stopped]
            if len(free) <= self.count - MAX_STOPPED:
                return False
            i = rng.choice(free)
            self.sidecars[i].send(signal.SIGSTOP)
            self.sidecars[i].stopped = True
            self._disturb(i)

            def resume(i: int = i) -> None:
                self.sidecars[i].send(signal.SIGCONT)
                self.sidecars[i].stopped = False
                self._settled(i)

            self._later(rng.uniform(1, 5), f"SIGCONT sidecar {i}", resume)
            return True
        if kind == "service_kill":
            up = [i for i, s in enumerate(self.services) if not s.killed]
            if len(up) <= self.count - MAX_DOWN:
                return False
            i = rng.choice(up)
            self.services[i].kill()
            self._disturb(i)

            def restart(i: int = i) -> None:
                self.start_service(i)
                self._settled(i)

            self._later(rng.uniform(1, 6), f"restart service {i}", restart)
            return True
        if kind == "yaml_good":
            i = rng.randrange(self.count)
            self._write_good(i)
            return True
        if kind == "yaml_bad":
            good = [i for i in range(self.count) if not self.yaml_bad[i]]
            if not good:
                return False
            i = rng.choice(good)
            self._write_bad(i)

            def fix(i: int = i) -> None:
                if self.yaml_bad[i]:
                    self._write_good(i)

            self._later(rng.uniform(2, 6), f"fix yaml {i}", fix)
            return True
        if kind == "fd_burst":
            if self.burst is not None:
                return False
            index = 0
            with contextlib.suppress(*NO_ANSWER):
                _, health = http_call(self.master_port, "GET", "/healthz", timeout=2)
                index = int(health.get("index", 0)) if isinstance(health, dict) else 0
            blocking = self.burst_size // 4
            self.burst = Burst(
                self.master_port, self.burst_size - blocking, blocking, index, self.rng
            )
            self.burst_window = (time.monotonic(), float("inf"))
            self.burst.open()

            def release() -> None:
                if self.burst is not None:
                    self.report.bursts.append(dict(self.burst.release()))
                    self.burst = None
                    self.burst_window = (self.burst_window[0], time.monotonic())

            self._later(rng.uniform(3, 6), "release the burst", release)
            return True
        raise ValueError(kind)

    def chaos(self, duration: float, max_events: int) -> None:
        self.report.duration = duration
        self.probe.start()
        self._observer.start()
        kinds = list(KINDS)
        self.rng.shuffle(kinds)  # every kind once first, then by weight
        start = time.monotonic()
        end = start + duration
        next_at = start + self.rng.uniform(0.5, 1.5)
        done = 0
        while time.monotonic() < end and done < max_events:
            self._run_due()
            self._check_processes()
            if time.monotonic() >= next_at:
                kind = kinds.pop(0) if kinds else self._pick()
                if self._event(kind):
                    self.report.events[kind] += 1
                    done += 1
                elif len(kinds) < len(KINDS) and kind not in self.report.events:
                    kinds.append(kind)  # every kind once: try this one again later
                next_at = time.monotonic() + self.rng.uniform(0.5, 2.5)
            time.sleep(0.05)
        self.report.chaos_seconds = time.monotonic() - start

    def _pick(self) -> str:
        kinds = list(WEIGHTS)
        return self.rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]

    # --- afterwards ---

    def finish(self) -> None:
        """Stop the chaos, put everything right, check the registry follows."""
        self._run_due(everything=True)  # resume, restart, fix, release
        for i in range(self.count):
            if self.yaml_bad[i]:
                self._write_good(i)
        self._check_processes()
        self.probe.stop()
        self._observe_stop.set()
        self._observer.join(10)
        report = self.report
        report.probe = self.probe.counts
        self.verify_probe("the chaos")
        start = time.monotonic()
        deadline = start + report.convergence_bound_s
        wrong = self.mismatches()
        while wrong and time.monotonic() < deadline:
            time.sleep(0.25)
            wrong = self.mismatches()
        if wrong:
            report.problems.append(
                f"not converged within {report.convergence_bound_s:.1f} s: " + "; ".join(wrong[:20])
            )
        else:
            report.convergence_s = time.monotonic() - start
        end = self.sample()
        for name, (fd1, rss1) in end.items():
            fd0, rss0 = self.baseline.get(name, (None, None))
            report.resources.append((name, fd0, fd1, rss0, rss1))
            if fd0 is not None and fd1 is not None and fd1 > fd0 + FD_GROWTH:
                report.problems.append(f"{name}: descriptors {fd0} -> {fd1}")
            if rss0 and rss1 and rss1 > rss0 * (1 + RSS_GROWTH):
                report.problems.append(f"{name}: RSS {_mib(rss0)} -> {_mib(rss1)}")
        self._passing_iff_running()
        self._check_processes()
        report.rejections_logged = sum(len(s.events("config_rejected")) for s in self.sidecars)
        report.master_log = log_summary(self.master.log_text(this_run_only=False))
        for sidecar in self.sidecars:
            report.sidecar_log += log_summary(sidecar.log_text(this_run_only=False))
        if report.lost:
            report.problems.append(f"{len(report.lost)} acknowledged probe states lost")
            report.problems += report.lost[:10]
        report.problems += report.sidecar_exits + report.master_crashes

    def _passing_iff_running(self) -> None:
        """Kill three services: exactly those turn critical; back up, they pass again."""
        down = frozenset(self.rng.sample(range(self.count), 3))
        for i in down:
            self.services[i].kill()
        bound = INTERVAL + TIMEOUT + SLACK
        for phase, want in (("down", down), ("up again", frozenset())):
            deadline = time.monotonic() + bound
            wrong = self.mismatches(want)
            while wrong and time.monotonic() < deadline:
                time.sleep(0.25)
                wrong = self.mismatches(want)
            if wrong:
                self.report.problems.append(
                    f"services {sorted(down)} {phase}: not within {bound:.1f} s: "
                    + "; ".join(wrong[:10])
                )
            if phase == "down":
                for i in down:
                    self.start_service(i)

    def teardown(self) -> None:
        """Stop everything by pid: sidecars first (they deregister), then the rest."""
        self._observe_stop.set()
        if self.burst is not None:
            self.burst.close()
        with contextlib.suppress(Exception):
            if self.probe.is_alive():
                self.probe.stop()
        for group in (self.sidecars, self.services, [self.master]):
            for proc in group:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            for proc in group:
                with contextlib.suppress(ProcessLookupError, ChildProcessError):
                    proc.reap()


def run(
    workdir: Path,
    *,
    duration: float = 120.0,
    max_events: int | None = None,
    services: int = 20,
    seed: int = 1,
    master_nofile: int = 1024,
    burst: int = 1400,
) -> Report:
    """Set up, warm up, the chaos for `duration` s (at most `max_events`), the checks after;
    every process stopped whatever happens."""
    harness = Harness(
        workdir, services=services, seed=seed, master_nofile=master_nofile, burst=burst
    )
    try:
        harness.setup()
        harness.warm_up()
        harness.chaos(duration, max_events if max_events is not None else int(duration * 2) + 10)
        harness.finish()
    finally:
        harness.teardown()
    return harness.report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of chaos")
    parser.add_argument("--max-events", type=int, default=None)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--master-nofile", type=int, default=1024, help="0: leave it")
    parser.add_argument("--burst", type=int, default=1400, help="sockets in a burst, at most")
    parser.add_argument("--workdir", type=Path, default=None, help="kept; default: a temp dir")
    args = parser.parse_args(argv)
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="picoapi-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos: seed {args.seed}, {args.duration:.0f} s, files in {workdir}", flush=True)
    try:
        report = run(
            workdir,
            duration=args.duration,
            max_events=args.max_events,
            services=args.services,
            seed=args.seed,
            master_nofile=args.master_nofile,
            burst=args.burst,
        )
    except ChaosError as exc:
        print(f"chaos: could not set up: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    if not keep and not report.problems:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not keep:
        print(f"chaos: logs kept in {workdir}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
