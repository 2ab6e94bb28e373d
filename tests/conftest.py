"""Shared fixtures: the real master and sidecar as processes, stopped by pid."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class Daemon:
    """A daemon started as a process, its JSON log lines written to a file we can read."""

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], Any] | None = None,
    ):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=str(log_path.parent),
            preexec_fn=preexec_fn,
        )
        self.pid = self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def wait_for_event(self, name: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                    return event
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.argv[0]} exited ({self.proc.returncode}) before {name!r}:\n"
                    + self.log_path.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.05)
        raise AssertionError(
            f"no {name!r} event within {timeout}s:\n"
            + self.log_path.read_text(errors="replace")[-3000:]
        )

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(5)


class Master(Daemon):
    """`picoapi-master` on a free loopback port."""

    url: str

    def start_wait(self) -> Master:
        event = self.wait_for_event("master_started")
        self.url = f"http://{event['listen']}"
        return self

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Response:
        return http_request(
            method, self.url + path, body, raw=raw, headers=headers, timeout=timeout
        )


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


def http_request(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    sent_headers = dict(headers or {})
    payload = raw
    if payload is None and body is not None:
        payload = json.dumps(body).encode()
        sent_headers.setdefault("Content-Type", "application/json")
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path or "/", body=payload, headers=sent_headers)
        answer = conn.getresponse()
        return Response(
            answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        )
    finally:
        conn.close()


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{message} not met within {timeout}s (last: {last!r})")


@pytest.fixture
def start_master(tmp_path: Path) -> Iterator[Callable[..., Master]]:
    """Start `picoapi-master` processes; every one is stopped at the end of the test."""
    started: list[Master] = []

    def start(
        *args: str,
        store: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        preexec_fn: Callable[[], Any] | None = None,
    ) -> Master:
        argv = [
            str(BIN / "picoapi-master"),
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--store",
            store or f"sqlite:///{tmp_path}/registry.db",
            *args,
        ]
        master = Master(
            argv, tmp_path / f"master-{len(started)}.log", env=env, preexec_fn=preexec_fn
        )
        started.append(master)
        return master.start_wait() if wait else master

    yield start
    for master in started:
        master.stop()
