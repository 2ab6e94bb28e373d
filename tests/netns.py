"""Linux network namespaces for tests, made with `ip netns` and always taken down again.

Every address a test gives out lives only inside namespaces it made here, and every packet
to one must start inside one of them: `Namespaces.exec_argv` and `ns_http` are the only
ways these helpers send anything, and `ns_http` only talks to loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

IP_TIMEOUT: Final = 10.0
HTTP_TIMEOUT: Final = 3.0
CLEANUP_TIMEOUT: Final = 5.0

# Runs inside a namespace (and a container: tests.podman_fixture); http.client, not urllib,
# so no proxy from the environment applies.
HTTP_SCRIPT: Final = """
import http.client, json, sys
method, host, port, path, timeout = sys.argv[1:6]
conn = http.client.HTTPConnection(host, int(port), timeout=float(timeout))
try:
    conn.request(method, path)
    answer = conn.getresponse()
    status, body = answer.status, answer.read().decode("utf-8", "replace")
except OSError as exc:
    status, body = 0, repr(exc)
finally:
    conn.close()
print(json.dumps({"status": status, "body": body}))
"""


class NetnsError(RuntimeError):
    """An `ip` command failed; the message carries its stderr."""


def ip_binary() -> str:
    """The `ip` command, or a skip when the test cannot make namespaces here."""
    if sys.platform != "linux":
        pytest.skip("network namespaces need Linux")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    return ip


class Namespaces:
    """The namespaces one test made; `close()` kills what runs in them, then deletes them."""

    def __init__(self, ip: str, tag: str = "picoapi") -> None:
        self.ip_path = ip
        self.prefix = f"{tag}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.names: list[str] = []

    def add(self, role: str) -> str:
        """Make the namespace `<prefix>-<role>`; skip the test when the kernel refuses."""
        name = f"{self.prefix}-{role}"
        done = self._ip("netns", "add", name)
        if done.returncode != 0:
            pytest.skip(f"`ip netns add` failed: {done.stderr.strip()}")
        self.names.append(name)
        return name

    def run(self, ns: str, *args: str) -> str:
        """`ip -n NS ARGS...`: configure a namespace; raises NetnsError on failure."""
        done = self._ip("-n", ns, *args)
        if done.returncode != 0:
            raise NetnsError(f"ip -n {ns} {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def exec_argv(self, ns: str, argv: list[str]) -> list[str]:
        """The argv that runs `argv` inside `ns` (`ip netns exec` execs it: same pid)."""
        return [self.ip_path, "netns", "exec", ns, *argv]

    def pids(self, ns: str) -> list[int]:
        done = self._ip("netns", "pids", ns)
        return [int(word) for word in done.stdout.split() if word.isdigit()]

    def close(self) -> None:
        """Kill anything left inside each namespace (by pid), then delete the namespace."""
        errors = []
        for ns in reversed(self.names):
            deadline = time.monotonic() + CLEANUP_TIMEOUT
            while (left := self.pids(ns)) and time.monotonic() < deadline:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)
            if left:
                errors.append(f"{ns}: processes still inside: {left}")
            done = self._ip("netns", "del", ns)
            if done.returncode != 0:
                errors.append(f"{ns}: {done.stderr.strip()}")
        self.names.clear()
        if errors:
            raise NetnsError("; ".join(errors))

    def _ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.ip_path, *args],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )


def ns_http(
    spaces: Namespaces, ns: str, url: str, method: str = "GET", timeout: float = HTTP_TIMEOUT
) -> tuple[int, Any]:
    """Request a loopback `url` from inside `ns`: (status, JSON body or text); status 0 if
    nothing answered."""
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1" or parts.port is None:
        raise ValueError(f"ns_http only talks to 127.0.0.1:PORT inside a namespace, not {url}")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    argv = [sys.executable, "-I", "-S", "-c", HTTP_SCRIPT, method, "127.0.0.1"]
    done = subprocess.run(
        spaces.exec_argv(ns, [*argv, str(parts.port), path or "/", str(timeout)]),
        capture_output=True,
        text=True,
        timeout=timeout + IP_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise NetnsError(f"request {method} {url} in {ns} failed: {done.stderr.strip()}")
    answer = json.loads(done.stdout)
    try:
        body = json.loads(answer["body"])
    except ValueError:
        body = answer["body"]
    return int(answer["status"]), body
