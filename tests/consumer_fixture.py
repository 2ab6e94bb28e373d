"""What the real-consumer tests (tests/test_consumer_*.py, issue 11) share.

    from tests import consumer_fixture
    start_catalog = consumer_fixture.start_catalog  # bound, not imported: no F811 on uses
    start_sidecar = consumer_fixture.start_sidecar

`start_catalog(*master_args)` starts the master and answers a `Catalog`: the master, for
writes, and `url`, the catalog the consumer reads. It is parametrized over the catalogs a
consumer may read; only the master serves these routes yet. The sidecar joins when it
serves them (issue 11, part 5): add "sidecar" to CATALOG_KINDS and start one in
`start_catalog`, and every consumer test runs against it as well.

`start_sidecar(service, master_url, ...)` runs the real `picoapi-sidecar` beside a Node.js
test service; `put_service` registers a record directly, as any client of the API may.
Every process is stopped by its pid at the end of the test that started it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.conftest import BIN, ROOT, Daemon, Master, http_request
from tests.service_fixture import NodeService, unused_port

# The catalogs a consumer reads. The sidecar joins when it serves these routes.
CATALOG_KINDS: Final = ("master",)
# Where the consumers' own installs live (ignored by git): the picoapi venv.
CACHE: Final = ROOT / ".cache"
READ_TOKEN: Final = "reader-8d1f0c2e"


@dataclass(frozen=True)
class Catalog:
    """A running catalog: `master` takes the writes, `url` is where a consumer reads."""

    kind: str
    master: Master
    url: str

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(params=CATALOG_KINDS)
def start_catalog(
    request: pytest.FixtureRequest, start_master: Callable[..., Master]
) -> Callable[..., Catalog]:
    """Start the master with `master_args`; answer the catalog of this parameter."""

    def start(*master_args: str) -> Catalog:
        master = start_master(*master_args, store="memory://")
        if request.param == "master":
            return Catalog("master", master, master.url)
        raise AssertionError(f"no catalog of kind {request.param!r}")

    return start


def read_token_file(directory: Path) -> Path:
    """A --read-token-file holding READ_TOKEN, read-only."""
    path = directory / "read-tokens"
    path.write_text(f"# the consumers' read token\n{READ_TOKEN} read\n")
    return path


# --- the sidecar beside a Node.js service -----------------------------------------------


class Sidecar(Daemon):
    url: str
    port: int
    service_id: str


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """Start `picoapi-sidecar run` for a Node.js service; each stopped (SIGTERM) at the end."""
    started: list[Sidecar] = []

    def start(
        service: NodeService,
        master_url: str,
        *,
        name: str,
        ident: str,
        tags: Sequence[str] = (),
        meta: dict[str, str] | None = None,
        check_path: str = "/healthz",
        port: int | None = None,
    ) -> Sidecar:
        port = port or unused_port()
        # JSON is YAML: every value is quoted as it must be, whatever it holds.
        text = f"""\
service:
  name: {json.dumps(name)}
  id: {json.dumps(ident)}
  address: 127.0.0.1
  port: {service.port}
  tags: {json.dumps(list(tags))}
  meta: {json.dumps(meta or {})}
check:
  http: {json.dumps(check_path)}
  interval: 1s
  timeout: 500ms
  deregister_after: 0
master:
  url: {json.dumps(master_url)}
sidecar:
  listen: 127.0.0.1:{port}
  advertise: 127.0.0.1:{port}
  resync: 30s
"""
        path = tmp_path / f"sidecar-{ident}.yaml"
        path.write_text(text)
        sidecar = Sidecar(
            [str(BIN / "picoapi-sidecar"), "--log-format", "json", "run", str(path)],
            tmp_path / f"sidecar-{ident}.log",
        )
        started.append(sidecar)
        sidecar.url, sidecar.port, sidecar.service_id = f"http://127.0.0.1:{port}", port, ident
        sidecar.wait_for_event("registered", service_id=ident)
        return sidecar

    yield start
    for sidecar in started:
        sidecar.stop()


# --- records on the master ------------------------------------------------------------


def put_service(
    master: Master,
    ident: str,
    name: str,
    *,
    port: int = 8080,
    tags: Sequence[str] = (),
    meta: dict[str, str] | None = None,
    check_url: str | None = None,
) -> dict[str, Any]:
    """Register (or replace) a record straight through the master's API."""
    body: dict[str, Any] = {
        "name": name,
        "address": "127.0.0.1",
        "port": port,
        "tags": list(tags),
        "meta": meta or {},
    }
    if check_url is not None:
        body["check"] = {"url": check_url, "interval": "1s", "timeout": "500ms"}
    answer = master.request("PUT", f"/v1/services/{ident}", body)
    assert answer.status == 200, answer
    record: dict[str, Any] = answer.json()
    return record


def status_of(master: Master, ident: str) -> str | None:
    answer = master.request("GET", f"/v1/services/{ident}", headers=_master_read_headers())
    return answer.json()["status"] if answer.status == 200 else None


def _master_read_headers() -> dict[str, str]:
    # Harmless when reads are open; what they need when --read-token-file guards them.
    return {"Authorization": f"Bearer {READ_TOKEN}"}


def wait_for_status(master: Master, expected: dict[str, str], timeout: float = 10.0) -> None:
    """Until every id has its status at the master (its checks have run)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        seen = {ident: status_of(master, ident) for ident in expected}
        if seen == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"statuses not {expected} within {timeout}s: {seen}")


# --- an install shared by concurrent test runs ------------------------------------------


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`: two test runs in one tree install one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stamp_matches(stamp: Path, what: str) -> bool:
    return stamp.exists() and stamp.read_text() == what


def loopback_env() -> dict[str, str]:
    """The environment for a consumer: no proxy between it and 127.0.0.1."""
    env = dict(os.environ)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        env.pop(key, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    answer = http_request("GET", url, headers=headers)
    assert answer.status == 200, answer
    return answer.json()
