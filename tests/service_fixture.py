"""The Node.js test service (tests/service/server.js) as a process, for any test to use.

    from tests import service_fixture
    node_service = service_fixture.node_service  # bound, not imported: no F811 on uses
    http_session = service_fixture.http_session

`node_service` is a pytest fixture; `start_node_service` is the context manager behind it,
for tests that want a second service or one of their own. Either kills the process by its
pid at the end. `http_session` is an aiohttp client session closed after the test.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

SERVER_JS: Final = Path(__file__).resolve().parent / "service" / "server.js"
START_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 5.0
CONTROL_TIMEOUT: Final = 5.0


class NodeService:
    """A running server.js: its port, its pid, and the controls the tests switch."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, marker: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        # On the command line only: a cmdline check for it matches this process and no other.
        self.marker = marker

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def set_health(self, status: int = 200, body: str = "ok", delay_ms: int = 0) -> None:
        self._post("/control/health", {"status": status, "body": body, "delay_ms": delay_ms})

    def set_openapi(
        self,
        document: Any = None,
        *,
        raw: str | None = None,
        content_type: str = "application/yaml",
    ) -> None:
        """Serve `document` (JSON), or `raw` text verbatim with `content_type`."""
        if raw is not None:
            self._post_raw("/control/openapi?raw=1", raw.encode(), content_type)
        else:
            self._post("/control/openapi", document)

    def stats(self) -> dict[str, int]:
        """Requests served so far, by path."""
        with urllib.request.urlopen(self.url("/control/stats"), timeout=CONTROL_TIMEOUT) as r:
            counts: dict[str, int] = json.load(r)
        return counts

    def hits(self, path: str) -> int:
        return self.stats().get(path, 0)

    def kill(self) -> None:
        """Stop it now (SIGKILL) and reap it, so no zombie is left for process checks."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def _post(self, path: str, value: Any) -> None:
        self._post_raw(path, json.dumps(value).encode(), "application/json")

    def _post_raw(self, path: str, body: bytes, content_type: str) -> None:
        request = urllib.request.Request(
            self.url(path), data=body, method="POST", headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=CONTROL_TIMEOUT) as answer:
            answer.read()


@contextmanager
def start_node_service(env: dict[str, str] | None = None) -> Iterator[NodeService]:
    """Start server.js on a free loopback port; wait for LISTENING; kill it at the end."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (Node.js 20) is not installed")
    marker = f"picoapi-test-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [node, str(SERVER_JS), "0", marker],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    service: NodeService | None = None
    try:
        service = NodeService(proc, _wait_listening(proc), marker)
        yield service
    finally:
        if service is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        else:
            service.stop()


def _wait_listening(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"server.js printed no LISTENING line within {START_TIMEOUT}s")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 256)  # unbuffered: select sees the rest
            if not chunk:
                raise AssertionError(f"server.js exited ({proc.wait()}) before LISTENING")
            line += chunk
    word, _, port = line.decode().strip().partition(" ")
    assert word == "LISTENING", f"unexpected first line from server.js: {line!r}"
    return int(port)


def unused_port() -> int:
    """A loopback port nothing listens on (the kernel just handed it out and took it back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def node_service() -> Iterator[NodeService]:
    with start_node_service() as service:
        yield service


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """The one shared client session a sidecar's owner would hand to its probes."""
    async with aiohttp.ClientSession() as session:
        yield session
