"""A real etcd on loopback for tests: one member (`etcd`) or three (`etcd_cluster`).

    from tests import etcd_fixture
    etcd = etcd_fixture.etcd  # bound, not imported: no F811 on uses
    etcd_cluster = etcd_fixture.etcd_cluster

Each member is /usr/bin/etcd (or the first `etcd` on PATH) as a process with its own data
directory under the test's tmp_path and free 127.0.0.1 ports, stopped by its pid at the
end (SIGTERM, then SIGKILL after a bound). `start_etcd_cluster` is the context manager
behind both fixtures, for a test that wants a cluster of its own.

The settings are for speed, not production: a heartbeat of 100 ms and an election
timeout of 1 s (the default election timeout, so the lease minimum TTL stays etcd's usual
2 s: ceil(1.5 x election timeout)), and a watch progress interval of 1 s instead of 10 min
so progress notifications can be seen in a test. Flags are chosen by reading `etcd --help`
once, because their names moved between versions (3.6 drops `--experimental-` from the
progress interval).
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Final

import pytest

ETCD_CANDIDATES: Final = ("/usr/bin/etcd", "etcd")
HEARTBEAT_MS: Final = 100
ELECTION_MS: Final = 1000
LEASE_MIN_TTL: Final = 2  # ceil(1.5 * ELECTION_MS / 1000): what a grant of 1 s gets
PROGRESS_INTERVAL: Final = 1.0  # seconds between watch progress notifications
START_TIMEOUT: Final = 20.0  # a first election on a loaded 2-core machine
STOP_TIMEOUT: Final = 5.0
# At teardown the data is thrown away: a leader that cannot hand over its leadership (its
# peers are going down too) is not waited for long.
TEARDOWN_TIMEOUT: Final = 2.0
HTTP_TIMEOUT: Final = 2.0


def etcd_binary() -> str:
    """The etcd to run; skips the test (with the reason) when there is none."""
    for candidate in ETCD_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")


@functools.cache
def _help_text(binary: str) -> str:
    done = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
    return done.stdout + done.stderr


def _has_flag(binary: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}\b", _help_text(binary)) is not None


def version_flags(binary: str, progress_interval: float) -> list[str]:
    """The flags whose names differ by version, in the form this etcd takes."""
    flags = []
    interval = f"{int(progress_interval * 1000)}ms"
    for name in (
        "--watch-progress-notify-interval",
        "--experimental-watch-progress-notify-interval",
    ):
        if _has_flag(binary, name):
            flags.append(f"{name}={interval}")
            break
    if _has_flag(binary, "--logger"):  # 3.4 defaults to capnslog and warns about it
        flags += ["--logger=zap", "--log-outputs=stderr"]
    if _has_flag(binary, "--unsafe-no-fsync"):  # 3.5+: a test cluster need not fsync
        flags.append("--unsafe-no-fsync")
    return flags


def free_ports(count: int) -> list[int]:
    """Loopback ports nothing listens on, all distinct (held open together while chosen)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def gateway_post(url: str, path: str, body: dict[str, Any], timeout: float = HTTP_TIMEOUT) -> Any:
    """One POST to etcd's JSON gateway with the standard library (no event loop needed)."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        answer = conn.getresponse()
        payload = json.loads(answer.read() or b"{}")
        if answer.status != 200:
            raise AssertionError(f"etcd {url}{path}: HTTP {answer.status} {payload}")
        return payload
    finally:
        conn.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class EtcdMember:
    """One etcd process: its name, ports and data directory outlive restarts."""

    def __init__(self, name: str, client_port: int, peer_port: int, base: Path) -> None:
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.url = f"http://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.data_dir = base / f"{name}.data"
        self.log_path = base / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, argv: list[str]) -> None:
        assert not self.running, f"{self.name} is already running"
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def signal_and_wait(self, signum: int, timeout: float) -> bool:
        """Send `signum` to this member's pid; True once it has exited within `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return True
        os.kill(self.proc.pid, signum)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        self.signal_and_wait(signal.SIGKILL, STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if not self.signal_and_wait(signal.SIGTERM, timeout):
            self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def status(self) -> dict[str, Any]:
        """This member's /v3/maintenance/status (raises OSError while it does not answer)."""
        answer: dict[str, Any] = gateway_post(self.url, "/v3/maintenance/status", {})
        return answer


class EtcdCluster:
    """`size` members on loopback; `urls` are their client URLs, `endpoints` the same
    comma-joined (the form of etcdctl's --endpoints and of a store URL's host list)."""

    def __init__(
        self, base: Path, size: int = 1, *, progress_interval: float = PROGRESS_INTERVAL
    ) -> None:
        self.binary = etcd_binary()
        self.base = base
        self.token = f"picoapi-test-{os.getpid()}-{id(self)}"
        ports = free_ports(2 * size)
        self.members = [
            EtcdMember(f"m{i}", ports[2 * i], ports[2 * i + 1], base) for i in range(size)
        ]
        self.urls = [member.url for member in self.members]
        self.endpoints = ",".join(self.urls)
        self._extra = version_flags(self.binary, progress_interval)

    def _argv(self, member: EtcdMember) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        # On a restart the data directory wins and the --initial-* flags are ignored,
        # so the same command line serves the first start and every later one.
        return [
            self.binary,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.url}",
            f"--advertise-client-urls={member.url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            *self._extra,
        ]

    # -- lifecycle -------------------------------------------------------------------

    def start(self, i: int, *, wait: bool = True) -> None:
        """(Re)start member `i` on its data directory and ports; by default wait until it
        answers (not until it has a leader: alone in a cluster of three it will not)."""
        self.members[i].start(self._argv(self.members[i]))
        if wait:
            self.wait_answering(i)

    def start_all(self, *, wait: bool = True) -> None:
        for i, member in enumerate(self.members):
            if not member.running:
                self.start(i, wait=False)
        if wait:
            self.wait_leader()

    def stop(self, i: int) -> None:
        """SIGTERM member `i` (SIGKILL after a bound) and reap it."""
        self.members[i].stop()

    def kill(self, i: int) -> None:
        """SIGKILL member `i` and reap it: a crash, no goodbye to its peers."""
        self.members[i].kill()

    def stop_all(self) -> None:
        for member in self.members:
            member.stop()

    def close(self) -> None:
        """Stop every member by its pid: SIGTERM to all first, so they go down together."""
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                os.kill(member.proc.pid, signal.SIGTERM)
        for member in self.members:
            member.stop(TEARDOWN_TIMEOUT)

    # -- waiting ---------------------------------------------------------------------

    def wait_answering(self, i: int, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        member = self.members[i]
        deadline = time.monotonic() + timeout
        while True:
            if not member.running:
                raise AssertionError(f"etcd {member.name} exited:\n{member.log_tail()}")
            try:
                return member.status()
            except (OSError, AssertionError, ValueError):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"etcd {member.name} did not answer within {timeout}s:\n"
                        + member.log_tail()
                    ) from None
            time.sleep(0.05)

    def wait_leader(self, timeout: float = START_TIMEOUT) -> int:
        """Wait until every running member answers and names the same leader; its id."""
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while time.monotonic() < deadline:
            running = [i for i, m in enumerate(self.members) if m.running]
            leaders = {self.wait_answering(i, timeout).get("leader", "0") for i in running}
            if len(leaders) == 1 and "0" not in leaders:
                return int(leaders.pop())
            seen = leaders
            time.sleep(0.05)
        raise AssertionError(f"no common leader within {timeout}s (seen {seen})")

    # -- data --------------------------------------------------------------------------

    def any_url(self) -> str:
        for member in self.members:
            if member.running:
                return member.url
        raise AssertionError("no etcd member is running")

    def compact(self, revision: int) -> None:
        """Compact the history up to `revision`, through the gateway; physical, so it is
        done when this returns."""
        gateway_post(
            self.any_url(), "/v3/kv/compaction", {"revision": str(revision), "physical": True}
        )

    def put(self, key: bytes, value: bytes) -> int:
        """A put that goes around the client under test; the revision it made."""
        answer = gateway_post(self.any_url(), "/v3/kv/put", {"key": b64(key), "value": b64(value)})
        return int(answer["header"]["revision"])

    def metric(self, i: int, name: str) -> float | None:
        """One unlabelled gauge or counter from member `i`'s /metrics, None if absent."""
        host, port = "127.0.0.1", self.members[i].client_port
        conn = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None


def store_url(cluster: EtcdCluster, prefix: str = "") -> str:
    """The master's `--store` for this cluster: etcd://HOST:PORT,HOST:PORT[/PREFIX]."""
    return "etcd://" + cluster.endpoints.replace("http://", "") + prefix


@contextmanager
def start_etcd_cluster(
    base: Path, size: int = 1, *, progress_interval: float = PROGRESS_INTERVAL
) -> Iterator[EtcdCluster]:
    """Start `size` members in `base` and wait for a leader; stop them all at the end."""
    base.mkdir(parents=True, exist_ok=True)
    cluster = EtcdCluster(base, size, progress_interval=progress_interval)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """One etcd member on loopback."""
    with start_etcd_cluster(tmp_path / "etcd", 1) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three etcd members on loopback, a leader elected."""
    with start_etcd_cluster(tmp_path / "etcd-cluster", 3) as cluster:
        yield cluster
