"""What the real-consumer tests (tests/test_consumer_*.py, issue 11) share.

    from tests import consumer_fixture
    start_catalog = consumer_fixture.start_catalog  # bound, not imported: no F811 on uses
    start_sidecar = consumer_fixture.start_sidecar

`start_catalog(*master_args)` starts the master and answers a `Catalog`: the master, for
writes, and `url`, the catalog the consumer reads. It is parametrized over the catalogs a
consumer may read (CATALOG_KINDS): the master itself, and a sidecar of that master, which
answers the same questions from its discovery cache. That sidecar registers, then drains
(POST /drain: deregistered, and it stays so), so the catalog holds what the test put
there and nothing of its own; it reads the master with the read token when the master
has a --read-token-file (it lends it to its loopback callers).

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

# The catalogs a consumer reads: the master, and a sidecar answering from its cache.
CATALOG_KINDS: Final = ("master", "sidecar")
# Where the consumers' own installs live (ignored by git): the picoapi venv.
CACHE: Final = ROOT / ".cache"
READ_TOKEN: Final = "reader-8d1f0c2e"


class Sidecar(Daemon):
    url: str
    port: int
    service_id: str


@dataclass(frozen=True)
class Catalog:
    """A running catalog: `master` takes the writes, `url` is where a consumer reads."""

    kind: str
    master: Master
    url: str
    sidecar: Sidecar | None = None  # the one answering, for kind "sidecar"

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(params=CATALOG_KINDS)
def start_catalog(
    request: pytest.FixtureRequest,
    start_master: Callable[..., Master],
    tmp_path: Path,
) -> Iterator[Callable[..., Catalog]]:
    """Start the master with `master_args`; answer the catalog of this parameter."""
    started: list[Sidecar] = []

    def start(*master_args: str) -> Catalog:
        master = start_master(*master_args, store="memory://")
        if request.param == "master":
            return Catalog("master", master, master.url)
        if request.param == "sidecar":
            token = READ_TOKEN if "--read-token-file" in master_args else None
            sidecar = drained_sidecar(tmp_path, master.url, started, token)
            return Catalog("sidecar", master, sidecar.url, sidecar)
        raise AssertionError(f"no catalog of kind {request.param!r}")

    yield start
    for sidecar in started:
        sidecar.stop()


def drained_sidecar(
    directory: Path, master_url: str, started: list[Sidecar], token: str | None = None
) -> Sidecar:
    """A real sidecar of `master_url`, registered and then drained: it serves discovery and
    nothing of it is in the catalog. Its service is itself (a TCP check of its own port)."""
    port = unused_port()
    ident = f"catalog-sidecar-{port}"
    path = directory / f"{ident}.yaml"
    path.write_text(
        sidecar_yaml(
            name="catalog-sidecar",
            ident=ident,
            service_port=port,
            check="  tcp: true\n",
            master_url=master_url,
            port=port,
            master_token=token,
        )
    )
    sidecar = run_sidecar(path, directory / f"{ident}.log", port, ident, started)
    answer = http_request("POST", f"{sidecar.url}/drain", timeout=10)
    assert answer.status == 200 and answer.json()["drained"] is True, answer
    return sidecar


def read_token_file(directory: Path) -> Path:
    """A --read-token-file holding READ_TOKEN, read-only."""
    path = directory / "read-tokens"
    path.write_text(f"# the consumers' read token\n{READ_TOKEN} read\n")
    return path


# --- the sidecar beside a Node.js service -----------------------------------------------


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
        master_token: str | None = None,
        discovery_idle: str | None = None,
    ) -> Sidecar:
        port = port or unused_port()
        path = tmp_path / f"sidecar-{ident}.yaml"
        path.write_text(
            sidecar_yaml(
                name=name,
                ident=ident,
                service_port=service.port,
                check=f"  http: {json.dumps(check_path)}\n",
                master_url=master_url,
                port=port,
                tags=tags,
                meta=meta,
                master_token=master_token,
                discovery_idle=discovery_idle,
            )
        )
        sidecar = run_sidecar(path, tmp_path / f"sidecar-{ident}.log", port, ident, started)
        return sidecar

    yield start
    for sidecar in started:
        sidecar.stop()


def sidecar_yaml(
    *,
    name: str,
    ident: str,
    service_port: int,
    check: str,
    master_url: str,
    port: int,
    tags: Sequence[str] = (),
    meta: dict[str, str] | None = None,
    master_token: str | None = None,
    discovery_idle: str | None = None,
) -> str:
    """A service file; `check` is the lines of the probe under `check:`."""
    # JSON is YAML: every value is quoted as it must be, whatever it holds.
    token = f"  token: {json.dumps(master_token)}\n" if master_token else ""
    idle = f"  discovery_idle: {discovery_idle}\n" if discovery_idle else ""
    return f"""\
service:
  name: {json.dumps(name)}
  id: {json.dumps(ident)}
  address: 127.0.0.1
  port: {service_port}
  tags: {json.dumps(list(tags))}
  meta: {json.dumps(meta or {})}
check:
{check}  interval: 1s
  timeout: 500ms
  deregister_after: 0
master:
  url: {json.dumps(master_url)}
{token}sidecar:
  listen: 127.0.0.1:{port}
  advertise: 127.0.0.1:{port}
  resync: 30s
{idle}"""


def run_sidecar(
    path: Path, log_path: Path, port: int, ident: str, started: list[Sidecar] | None = None
) -> Sidecar:
    """`picoapi-sidecar run path`, once it has registered (added to `started` at once, so
    the caller stops it even when it never registers)."""
    sidecar = Sidecar(
        [str(BIN / "picoapi-sidecar"), "--log-format", "json", "run", str(path)], log_path
    )
    if started is not None:
        started.append(sidecar)
    sidecar.url, sidecar.port, sidecar.service_id = f"http://127.0.0.1:{port}", port, ident
    try:
        sidecar.wait_for_event("registered", service_id=ident)
    except BaseException:
        if started is None:
            sidecar.stop()
        raise
    return sidecar


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
