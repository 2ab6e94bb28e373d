"""Services built on the original picoapi 1.0.4 library registering with our master, through
picoapi's own registration code (tests/consumers/picoapi_service.py runs one).

picoapi, with the FastAPI and uvicorn it runs on, lives in a venv of its own under .cache/
(built once by a session fixture, under a lock, rebuilt when REQUIREMENTS change), as
bench/.venv-picoapi holds picoapi's master for the benchmark: none of it is the project's.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import pytest

from tests import consumer_fixture
from tests.conftest import Master, wait_until
from tests.consumer_fixture import CACHE, locked, stamp_matches

VENV: Final = CACHE / "picoapi-venv"
VENV_PYTHON: Final = VENV / "bin" / "python"
VENV_STAMP: Final = VENV / ".picoapi-installed"
# picoapi as released; the FastAPI and uvicorn it was tried with here (the shim is for it).
REQUIREMENTS: Final = ("picoapi==1.0.4", "fastapi==0.165.0", "uvicorn==0.54.0")
INSTALL_TIMEOUT: Final = 600.0
LAUNCHER: Final = Path(__file__).resolve().parent / "consumers" / "picoapi_service.py"
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
TITLE: Final = "Example Service"  # a FastAPI title, as picoapi services have
NAME: Final = "example-service"  # the name our master makes of it
# The "checked within about a second" rule: a new registration is not left to its interval.
FIRST_CHECK_WITHIN: Final = 2.0


@pytest.fixture(scope="session")
def picoapi_python() -> Path:
    """The venv's python, with picoapi 1.0.4, FastAPI and uvicorn."""
    wanted = "\n".join(REQUIREMENTS)
    with locked(CACHE / "picoapi-venv.lock"):
        if stamp_matches(VENV_STAMP, wanted) and VENV_PYTHON.exists():
            return VENV_PYTHON
        shutil.rmtree(VENV, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(VENV)],
            [str(VENV_PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             *REQUIREMENTS],
        ]  # fmt: skip
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, timeout=INSTALL_TIMEOUT, check=False)
            if done.returncode != 0:
                shutil.rmtree(VENV, ignore_errors=True)
                pytest.skip(
                    f"could not build the picoapi venv (offline?): {' '.join(argv[:4])}: "
                    + done.stderr.decode(errors="replace")[-500:]
                )
        VENV_STAMP.write_text(wanted)
    return VENV_PYTHON


class PicoapiService:
    """One picoapi service process; its port is the one it registered."""

    def __init__(self, python: Path, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(python), str(LAUNCHER)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**consumer_fixture.loopback_env(), **env},
        )
        self.pid = self.proc.pid
        self.port = self._wait_listening()
        self.ident = f"{NAME}-127.0.0.1-{self.port}"

    def _wait_listening(self) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no LISTENING within {START_TIMEOUT}s:\n{self.log()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 256)
                if not chunk:
                    raise AssertionError(f"exited ({self.proc.wait()}):\n{self.log()}")
                line += chunk
        word, _, port = line.decode().strip().partition(" ")
        assert word == "LISTENING", line
        return int(port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def start_picoapi(picoapi_python: Path, tmp_path: Path) -> Iterator[Callable[..., PicoapiService]]:
    """Start a picoapi service registering with `master`; every one stopped by pid."""
    started: list[PicoapiService] = []

    def start(master: Master, interval: int) -> PicoapiService:
        env = {
            "API_TITLE": TITLE,
            "API_HOST": "127.0.0.1",
            "API_BIND": "127.0.0.1",
            "API_REGISTER_PATH": f"{master.url}/register",
            "API_HEALTH_PATH": "/health",
            "API_HEALTH_INTERVAL": str(interval),
            "API_TAGS": "example:replica",
        }
        env.pop("API_MASTER", None)
        service = PicoapiService(picoapi_python, env, tmp_path / f"picoapi-{len(started)}.log")
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def records(master: Master) -> dict[str, dict[str, Any]]:
    answer = master.request("GET", f"/v1/services?name={NAME}")
    assert answer.status == 200, answer
    return {r["id"]: r for r in answer.json()["services"]}


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_two_replicas_sit_side_by_side_and_are_checked_at_once(
    start_master: Callable[..., Master], start_picoapi: Callable[..., PicoapiService]
) -> None:
    master = start_master(store="memory://")
    # picoapi's own example interval: 300 s. The first check must not wait for it.
    replicas = [start_picoapi(master, interval=300) for _ in range(2)]
    expected = {replica.ident for replica in replicas}
    assert len(expected) == 2
    found = wait_until(
        lambda: (got := records(master)).keys() == expected and got,
        timeout=15,
        message="both replicas registered",
    )
    for replica in replicas:
        record = found[replica.ident]
        assert (record["address"], record["port"]) == ("127.0.0.1", replica.port)
        assert record["tags"] == ["example", "replica"]
        assert record["meta"] == {"picoapi_name": TITLE}
        assert record["check"]["url"] == f"http://127.0.0.1:{replica.port}/health"
        assert record["check"]["interval"] == "5m"

    def all_passing() -> dict[str, dict[str, Any]] | None:
        got = records(master)
        return got if all(r["status"] == "passing" for r in got.values()) else None

    passing = wait_until(
        all_passing,
        timeout=FIRST_CHECK_WITHIN + 5,
        message="both replicas passing",
    )
    for record in passing.values():
        checked_after = at(record["last_check"]["at"]) - at(record["registered_at"])
        assert 0 <= checked_after <= FIRST_CHECK_WITHIN, (record["id"], checked_after)
    # What picoapi's own dashboards read: both, by the name they gave, healthy.
    status = master.request("GET", "/services/status").json()
    assert status == [{"name": TITLE, "status": "healthy"}] * 2


def test_a_stopped_replica_is_removed_after_the_configured_time(
    start_master: Callable[..., Master], start_picoapi: Callable[..., PicoapiService]
) -> None:
    master = start_master("--picoapi-deregister-after", "2s", store="memory://")
    kept, stopped = (start_picoapi(master, interval=1) for _ in range(2))
    wait_until(
        lambda: (
            {i: r["status"] for i, r in records(master).items()}
            == {kept.ident: "passing", stopped.ident: "passing"}
        ),
        timeout=15,
        message="both replicas registered and passing",
    )
    assert records(master)[stopped.ident]["check"]["deregister_after"] == "2s"
    stopped.stop()
    critical = wait_until(
        lambda: (r := records(master).get(stopped.ident)) and r["status"] == "critical" and r,
        timeout=5,
        message="the stopped replica critical",
    )
    critical_at = at(critical["status_changed_at"])
    wait_until(
        lambda: stopped.ident not in records(master),
        timeout=2 + 1 + 5,  # deregister_after, one interval, slack
        message="the stopped replica removed",
    )
    [reaped] = [
        e
        for e in master.events()
        if e.get("event") == "service_reaped" and e.get("service_id") == stopped.ident
    ]
    waited = at(reaped["timestamp"]) - critical_at
    # Not before its time, nor long after. The reaper counts on the monotonic clock and
    # the record's time is read from the wall clock a moment later: 10 ms between them.
    assert 2.0 - 0.01 <= waited <= 2.0 + 1.0 + 2.0, waited
    assert {i: r["status"] for i, r in records(master).items()} == {kept.ident: "passing"}
    assert master.request("GET", "/services/status").json() == [
        {"name": TITLE, "status": "healthy"}
    ]
