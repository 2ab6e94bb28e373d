"""What an outsider can hold of the master is bounded, and every refusal is JSON: open
connections, waiting blocking queries, slow headers and bodies, aiohttp's own errors."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Master, wait_until


def address(master: Master) -> tuple[str, int]:
    parts = urlsplit(master.url)
    return parts.hostname or "127.0.0.1", parts.port or 0


def raw(master: Master, data: bytes, *, timeout: float = 5.0) -> tuple[int, dict[str, str], Any]:
    """Send bytes as they are; the status, headers and JSON body of the answer."""
    with socket.create_connection(address(master), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


@contextlib.contextmanager
def idle_connections(master: Master, count: int) -> Iterator[list[socket.socket]]:
    sockets = [socket.create_connection(address(master), timeout=5) for _ in range(count)]
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_past_the_connection_limit_a_new_one_gets_503_with_retry_after(start_master: Any) -> None:
    master: Master = start_master("--max-connections", "70", store="memory://")
    assert master.wait_for_event("master_started")["max_connections"] == 70
    with idle_connections(master, 70):
        time.sleep(0.3)
        status, headers, body = raw(master, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and headers["retry-after"] == "1"
        assert body["error"]["code"] == "unavailable" and "70" in body["error"]["message"]
    # Let go of them, and the master serves again.
    wait_until(lambda: master.request("GET", "/healthz").status == 200, timeout=5.0)
    assert master.proc.poll() is None


def test_past_the_watcher_limit_a_blocking_query_gets_503(start_master: Any) -> None:
    master: Master = start_master("--max-watchers", "5", store="memory://")
    index = master.request("GET", "/healthz").json()["index"]
    request = f"GET /v1/services?index={index}&wait=20s HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with idle_connections(master, 5) as waiting:
        for sock in waiting:
            sock.sendall(request)
        time.sleep(0.5)
        status, headers, body = raw(master, request)
    assert status == 503 and headers["retry-after"] == "1"
    assert body["error"]["code"] == "store_unavailable" and "5" in body["error"]["message"]
    assert master.request("GET", "/v1/services").status == 200  # reads that do not wait: fine


def test_headers_that_trickle_are_cut_off(start_master: Any) -> None:
    master: Master = start_master("--read-timeout", "1s", store="memory://")
    with socket.create_connection(address(master), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sock.sendall(b"X-Slow: 1\r\n")  # ...and never the blank line
        status, _, body = read_answer(sock)
        took = time.monotonic() - started
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert 0.9 <= took < 3.0
    # A quick request on a kept-alive connection is not cut by the same clock.
    with socket.create_connection(address(master), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(sock)[0] == 200
            time.sleep(1.2)  # idle longer than the read timeout between requests: fine


def test_a_body_that_trickles_gets_408(start_master: Any) -> None:
    master: Master = start_master("--read-timeout", "500ms", store="memory://")
    with socket.create_connection(address(master), timeout=5) as sock:
        sock.sendall(
            b"PUT /v1/services/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        status, _, body = read_answer(sock)
    assert status == 408 and body["error"]["code"] == "request_timeout"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ],
)
def test_aiohttps_own_refusals_have_the_json_error_shape(
    start_master: Any, request_bytes: bytes, status: int
) -> None:
    master: Master = start_master(store="memory://")
    answered, headers, body = raw(master, request_bytes)
    assert answered in (400, status), (answered, body)
    assert headers["content-type"].startswith("application/json")
    assert set(body["error"]) >= {"code", "message"}
    assert master.request("GET", "/healthz").status == 200


def test_the_descriptor_limit_is_raised_to_the_hard_one(start_master: Any) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard <= 512:
        pytest.skip(f"the hard limit here is {hard}")

    def low_soft_limit() -> None:  # as systemd's default 1024, or lower
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    master: Master = start_master(store="memory://", preexec_fn=low_soft_limit)
    limits = Path(f"/proc/{master.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3] == str(hard), line  # the soft limit, now the hard one
