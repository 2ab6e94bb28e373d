"""A pod, for real: the sidecar and a Node.js service share a network namespace, the master
runs in another, and a bridge in a third joins them, as a node's pod network would.

    pod ns                       switch ns                   master ns
    node :8080 (127.0.0.1)       br0                         picoapi-master 0.0.0.0:9500
    sidecar 0.0.0.0:9501         sw-pod ---- eth0 (pod)      eth0 10.231.77.1
    eth0 10.231.77.2 ----------- sw-pod      sw-master ----- eth0

Every address here exists only inside these namespaces, and every packet to one starts in
one of them: the test itself only ever talks to 127.0.0.1 from inside a namespace.
Cutting the link is `ip link set sw-pod down` in the switch: packets vanish, as in a real
partition.
"""

from __future__ import annotations

import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from tests.conftest import BIN, Daemon, wait_until
from tests.netns import Namespaces, NetnsError, ip_binary, ns_http
from tests.service_fixture import SERVER_JS

pytestmark = pytest.mark.netns

MASTER_IP: Final = "10.231.77.1"  # chosen here, used only inside this test's namespaces
POD_IP: Final = "10.231.77.2"
PREFIX_LEN: Final = 24
NODE_PORT: Final = 8080
MASTER_PORT: Final = 9500
SIDECAR_PORT: Final = 9501
SERVICE_ID: Final = "node-api-pod"
POD_PORT: Final = "sw-pod"  # the pod's port on the bridge, the one the test cuts
MASTER_SWITCH_PORT: Final = "sw-master"
CHECK_INTERVAL: Final = 1.0
POLL: Final = 0.2

SIDECAR_YAML: Final = f"""\
service:
  name: node-api
  id: {SERVICE_ID}
  address: ${{POD_IP}}
  port: {NODE_PORT}
  tags: [pod, netns]
  openapi: /openapi.json
check:
  http: /healthz
  interval: 1s
  timeout: 500ms
  deregister_after: 0
master:
  url: http://{MASTER_IP}:{MASTER_PORT}
sidecar:
  listen: 0.0.0.0:{SIDECAR_PORT}
  advertise: ${{POD_IP}}:{SIDECAR_PORT}
  resync: 1s
"""


@dataclass
class PodNet:
    """Three namespaces wired as a pod, a master host and the switch between them."""

    spaces: Namespaces
    pod: str
    master: str
    switch: str
    daemons: list[Daemon] = field(default_factory=list)

    def start(
        self, ns: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> Daemon:
        daemon = Daemon(self.spaces.exec_argv(ns, argv), log_path, env=env)
        self.daemons.append(daemon)
        return daemon

    def stop_all(self) -> None:
        """SIGKILL what is still running (the graceful path is what the test asserts)."""
        for daemon in reversed(self.daemons):
            daemon.kill()
            daemon.stop()  # only reaps and closes the log once it has exited

    def record(self) -> dict[str, Any] | None:
        """The service's record at the master, asked from inside the master's namespace."""
        status, body = ns_http(
            self.spaces, self.master, f"http://127.0.0.1:{MASTER_PORT}/v1/services/{SERVICE_ID}"
        )
        return body if status == 200 else None

    def sidecar_status(self) -> dict[str, Any]:
        status, body = ns_http(self.spaces, self.pod, f"http://127.0.0.1:{SIDECAR_PORT}/status")
        assert status == 200, body
        return dict(body)

    def healthz_hits(self) -> int:
        """How often the Node service's /healthz was called, asked from inside the pod."""
        status, body = ns_http(self.spaces, self.pod, f"http://127.0.0.1:{NODE_PORT}/control/stats")
        assert status == 200, body
        return int(body.get("/healthz", 0))

    def set_pod_link(self, up: bool) -> None:
        self.spaces.run(self.switch, "link", "set", POD_PORT, "up" if up else "down")


def _wire(spaces: Namespaces, switch: str, pod: str, master: str) -> None:
    """A bridge in the switch namespace, one veth pair to each of pod and master."""
    ports = ((pod, POD_PORT, POD_IP), (master, MASTER_SWITCH_PORT, MASTER_IP))
    try:
        spaces.run(switch, "link", "add", "br0", "type", "bridge")
        for ns, port, _ in ports:
            spaces.run(
                switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns
            )
    except NetnsError as exc:
        pytest.skip(f"cannot make a bridge or veth pair here: {exc}")
    spaces.run(switch, "link", "set", "br0", "up")
    for ns, port, address in ports:
        spaces.run(switch, "link", "set", port, "master", "br0", "up")
        spaces.run(ns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0")
        spaces.run(ns, "link", "set", "eth0", "up")
        spaces.run(ns, "link", "set", "lo", "up")


@pytest.fixture
def pod_net() -> Iterator[PodNet]:
    """The wired namespaces; every process in them is killed and every one deleted after."""
    ip = ip_binary()
    if shutil.which("node") is None:
        pytest.skip("node (Node.js 20) is not installed")
    spaces = Namespaces(ip)
    net: PodNet | None = None
    try:
        net = PodNet(spaces, spaces.add("pod"), spaces.add("master"), spaces.add("switch"))
        _wire(spaces, net.switch, net.pod, net.master)
        yield net
    finally:
        if net is not None:
            net.stop_all()
        spaces.close()


def _count(daemon: Daemon, event: str) -> int:
    return sum(1 for e in daemon.events() if e.get("event") == event)


def test_pod_sidecar_across_a_link_cut_and_restore(pod_net: PodNet, tmp_path: Path) -> None:
    net = pod_net
    node_path = shutil.which("node")
    assert node_path is not None
    node = net.start(
        net.pod,
        [node_path, str(SERVER_JS), str(NODE_PORT), f"picoapi-test-{uuid.uuid4().hex}"],
        tmp_path / "node.log",
        env={"HOST": "127.0.0.1"},
    )
    master = net.start(
        net.master,
        [
            str(BIN / "picoapi-master"),
            "--listen",
            f"0.0.0.0:{MASTER_PORT}",
            "--store",
            "memory://",
            "--log-format",
            "json",
        ],
        tmp_path / "master.log",
    )
    assert master.wait_for_event("master_started")["listen"] == f"0.0.0.0:{MASTER_PORT}"
    wait_until(
        lambda: f"LISTENING {NODE_PORT}" in node.log_path.read_text(),
        message="node service listening in the pod",
    )
    config = tmp_path / "service.yaml"
    config.write_text(SIDECAR_YAML)
    sidecar = net.start(
        net.pod,
        [str(BIN / "picoapi-sidecar"), "--log-format", "json", "run", str(config)],
        tmp_path / "sidecar.log",
        env={"POD_IP": POD_IP},
    )
    sidecar.wait_for_event("sidecar_started")

    # Registered with the pod's address, and checked by the master across the link.
    got = wait_until(
        lambda: (r := net.record()) and r["status"] == "passing" and r,
        timeout=15,
        interval=POLL,
        message="registered and passing",
    )
    assert got["address"] == POD_IP and got["port"] == NODE_PORT
    assert got["check"]["url"] == f"http://{POD_IP}:{SIDECAR_PORT}/health"
    assert got["openapi_sha256"], "the document fetched on the pod's localhost reached the master"
    registered_at = got["registered_at"]
    hits = net.healthz_hits()
    wait_until(
        lambda: net.healthz_hits() >= hits + 2,
        timeout=5,
        interval=POLL,
        message="the master's checks reach the service through the sidecar",
    )

    # Cut the pod off: the master sees it critical, the sidecar rides it out.
    failures_before = _count(sidecar, "sync_failed")
    net.set_pod_link(up=False)
    cut = wait_until(
        lambda: (r := net.record()) and r["status"] == "critical" and r,
        timeout=10,
        interval=POLL,
        message="critical while the link is cut",
    )
    assert cut["registered_at"] == registered_at
    wait_until(
        lambda: _count(sidecar, "sync_failed") > failures_before,
        timeout=10,
        interval=POLL,
        message="the sidecar notices it cannot reach the master",
    )
    hits = net.healthz_hits()
    time.sleep(2 * CHECK_INTERVAL)
    assert net.healthz_hits() == hits, "no check reaches the service while the link is cut"
    assert sidecar.proc.poll() is None, "the sidecar keeps running"
    assert net.sidecar_status()["registered"] is True
    still = net.record()
    assert still is not None and still["status"] == "critical", "the record stays, critical"

    # Restore it: passing again, the same registration, the sidecar back in sync.
    net.set_pod_link(up=True)
    back = wait_until(
        lambda: (r := net.record()) and r["status"] == "passing" and r,
        timeout=10,
        interval=POLL,
        message="passing after the link is restored",
    )
    assert back["registered_at"] == registered_at, "never removed and re-added"
    wait_until(
        lambda: net.sidecar_status()["failures"] == 0,
        timeout=10,
        interval=POLL,
        message="the sidecar syncs with the master again",
    )

    # SIGTERM: deregistered at the master across the link, exit 0.
    started = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(10) == 0
    assert time.monotonic() - started < 5
    assert net.record() is None
    assert "deregistered" in [e.get("event") for e in sidecar.events()]
    assert net.spaces.pids(net.pod) == [node.pid], "only the service is left in the pod"
