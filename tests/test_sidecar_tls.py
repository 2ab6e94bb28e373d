"""TLS towards the master: an https:// master verified against `master.ca_file`, a client
certificate from `master.cert_file`/`master.key_file`, one SSLContext built at load (and
again when a reload finds the files changed), and each bad file named at its line. The
master here is a small aiohttp HTTPS server with certificates made by trustme."""

from __future__ import annotations

import dataclasses
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from master.shared.yamlfile import ConfigError
from sidecar.config import Config, load_config
from sidecar.desired import Desired
from sidecar.master_client import MasterClient, MasterError
from sidecar.sync import SyncLoop
from tests import test_sidecar_sync
from tests.conftest import BIN, Daemon, http_request
from tests.service_fixture import unused_port as free_port

session = test_sidecar_sync.session  # bound, not imported: no F811 on uses


class HttpsMaster:
    """PUT /v1/services/{id} over TLS, requiring a client certificate of the CA's; records
    the certificate of each caller."""

    def __init__(self, ca: trustme.CA) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self.context)
        ca.configure_trust(self.context)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.callers: list[Any] = []  # the client certificate of each request
        self.url = ""

    async def put(self, request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        self.callers.append(request.transport.get_extra_info("peercert"))
        return web.json_response({"id": request.match_info["id"], "openapi_sha256": None})


@asynccontextmanager
async def https_master(ca: trustme.CA) -> AsyncIterator[HttpsMaster]:
    master = HttpsMaster(ca)
    app = web.Application()
    app.router.add_put("/v1/services/{id}", master.put)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=master.context)
    await site.start()
    master.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield master
    finally:
        await runner.cleanup()


def write_tls(directory: Path, ca: trustme.CA, name: str = "sidecar-1") -> None:
    """ca.pem, and a client certificate of the CA's in client.pem and client.key."""
    directory.mkdir(exist_ok=True)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client = ca.issue_cert(f"{name}.example", common_name=name)
    client.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    client.private_key_pem.write_to_path(str(directory / "client.key"))


def service_file(tmp_path: Path, url: str, master_extra: str) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(
        "service:\n  name: web\n  id: web-1\n  address: 127.0.0.1\n  port: 8080\n"
        f"master:\n  url: {url}\n{master_extra}"
        "sidecar:\n  listen: 127.0.0.1:9599\n"
    )
    return path


FULL = "  ca_file: tls/ca.pem\n  cert_file: tls/client.pem\n  key_file: tls/client.key\n"


async def put(session: aiohttp.ClientSession, config: Config) -> str:
    stored = await MasterClient(session, timeout=3.0).put(
        config.master, config.service.id, Desired(config).body(None)
    )
    return stored.url


async def test_an_https_master_verified_against_the_ca_with_a_client_certificate(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ca = trustme.CA()
    write_tls(tmp_path / "tls", ca)
    async with https_master(ca) as master:
        config = load_config(service_file(tmp_path, master.url, FULL), {})
        assert config.master.tls is not None and config.master.ssl is not None
        assert config.master.tls.ca_file == str(tmp_path / "tls" / "ca.pem")
        assert config.warnings == ()
        loop = SyncLoop(Desired(config), MasterClient(session), session)
        assert await loop.sync(), loop.state.last_error
        assert await put(session, config) == master.url
    subject = dict(item[0] for item in master.callers[0]["subject"])
    assert subject["commonName"] == "sidecar-1", "the master saw our client certificate"


async def test_without_the_ca_an_https_master_is_not_trusted(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ca = trustme.CA()
    write_tls(tmp_path / "tls", ca)
    async with https_master(ca) as master:
        no_ca = "  cert_file: tls/client.pem\n  key_file: tls/client.key\n"
        config = load_config(service_file(tmp_path, master.url, no_ca), {})
        with pytest.raises(MasterError) as raised:
            await put(session, config)
    port = master.url.rsplit(":", 1)[1]
    assert str(raised.value).startswith(
        f"{master.url}: TLS: the certificate of 127.0.0.1:{port} is not trusted: "
    )
    assert "self-signed certificate" in str(raised.value) or "issuer" in str(raised.value)
    assert master.callers == []


async def test_without_a_client_certificate_the_master_ends_the_handshake(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ca = trustme.CA()
    write_tls(tmp_path / "tls", ca)
    async with https_master(ca) as master:
        config = load_config(service_file(tmp_path, master.url, "  ca_file: tls/ca.pem\n"), {})
        with pytest.raises(MasterError) as raised:
            await put(session, config)
    assert str(raised.value).startswith(f"{master.url}: ")
    assert master.callers == []


async def test_a_client_certificate_of_another_ca_is_refused(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ca, stranger = trustme.CA(), trustme.CA()
    write_tls(tmp_path / "tls", stranger)
    ca.cert_pem.write_to_path(str(tmp_path / "tls" / "ca.pem"))  # the master is trusted
    async with https_master(ca) as master:
        config = load_config(service_file(tmp_path, master.url, FULL), {})
        with pytest.raises(MasterError):
            await put(session, config)
    assert master.callers == []


async def test_the_context_is_built_once_and_again_when_the_files_change(
    session: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that finds the same files compares equal (the watcher keeps the context
    in force); rotated files compare unequal, and the new context trusts the new master."""
    old_ca, new_ca = trustme.CA(), trustme.CA()
    write_tls(tmp_path / "tls", old_ca)
    contexts: list[Any] = []
    real = MasterClient._request

    async def recording(self: MasterClient, master: Any, *args: Any, **kwargs: Any) -> Any:
        contexts.append(master.ssl)
        return await real(self, master, *args, **kwargs)

    monkeypatch.setattr(MasterClient, "_request", recording)
    async with https_master(old_ca) as old_master, https_master(new_ca) as new_master:
        path = service_file(tmp_path, old_master.url, FULL)
        first = load_config(path, {})
        assert load_config(path, {}) == first, "unchanged files: no change, no new context"
        await put(session, first)
        await put(session, first)
        assert contexts[0] is contexts[1] is first.master.ssl, "one context, built once"
        write_tls(tmp_path / "tls", new_ca)  # rotated in place: same paths, new contents
        path.write_text(path.read_text().replace(old_master.url, new_master.url))
        second = load_config(path, {})
        assert second.master != first.master and second.master.ssl is not first.master.ssl
        assert second.master.tls is not None and first.master.tls is not None
        assert second.master.tls.digest != first.master.tls.digest
        assert await put(session, second) == new_master.url
        old_context = dataclasses.replace(first.master, urls=(new_master.url,))
        with pytest.raises(MasterError, match="not trusted"):
            await put(session, dataclasses.replace(first, master=old_context))


def test_tls_files_that_no_url_uses_draw_a_warning(tmp_path: Path) -> None:
    write_tls(tmp_path / "tls", trustme.CA())
    config = load_config(service_file(tmp_path, "http://m:9500", FULL), {})
    assert config.warnings == (
        f"{tmp_path / 'service.yaml'}:8: master.ca_file: no master.url is https://, so the "
        "TLS settings go unused",
    )


def _mismatched_key(directory: Path) -> None:
    other = trustme.CA().issue_cert("x.example")
    other.private_key_pem.write_to_path(str(directory / "client.key"))


def _not_pem(directory: Path) -> None:
    (directory / "ca.pem").write_text("not a certificate\n")


def _pem_but_no_ca(directory: Path) -> None:
    (directory / "ca.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )


def _missing_ca(directory: Path) -> None:
    (directory / "ca.pem").unlink()


@pytest.mark.parametrize(
    ("spoil", "master_extra", "expected"),
    [
        (
            None,
            "  key_file: tls/client.key\n",
            ":8: master.key_file: needs master.cert_file (the certificate it belongs to)",
        ),
        (_missing_ca, FULL, ":8: master.ca_file: cannot read '{tls}/ca.pem': No such file"),
        (_not_pem, FULL, ":8: master.ca_file: '{tls}/ca.pem' is not PEM (no -----BEGIN line)"),
        (_pem_but_no_ca, FULL, ":8: master.ca_file: '{tls}/ca.pem' holds no CA certificate"),
        (
            _mismatched_key,
            FULL,
            ":10: master.key_file: not a certificate and its private key: key values mismatch",
        ),
    ],
    ids=["key_without_cert", "missing_ca", "not_pem", "no_ca_in_pem", "key_mismatch"],
)
def test_each_bad_tls_file_is_named_at_its_line(
    tmp_path: Path,
    spoil: Callable[[Path], None] | None,
    master_extra: str,
    expected: str,
) -> None:
    write_tls(tmp_path / "tls", trustme.CA())
    if spoil is not None:
        spoil(tmp_path / "tls")
    path = service_file(tmp_path, "https://m:9500", master_extra)
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    message = str(raised.value)
    assert message.startswith(f"{path}{expected.format(tls=tmp_path / 'tls')}"), message
    assert len(raised.value.problems) == 1


def test_a_real_sidecar_registers_with_the_real_master_over_https(
    start_master: Any, tmp_path: Path
) -> None:
    """picoapi-master --tls-cert/--tls-key, and a sidecar that trusts its CA through
    master.ca_file: registered, then deregistered at SIGTERM, over HTTPS."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "master.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "master.key"))
    master = start_master(
        "--tls-cert", str(tmp_path / "master.pem"), "--tls-key", str(tmp_path / "master.key")
    )
    started = master.wait_for_event("master_started")
    assert started["scheme"] == "https"
    url = f"https://{started['listen']}"
    write_tls(tmp_path / "tls", ca)
    port = free_port()
    path = tmp_path / "service.yaml"
    path.write_text(
        "service:\n  name: web\n  id: web-tls\n  address: 127.0.0.1\n  port: 8080\n"
        f"master:\n  url: {url}\n{FULL}"
        f"sidecar:\n  listen: 127.0.0.1:{port}\n"
    )
    sidecar = Daemon(
        [str(BIN / "picoapi-sidecar"), "--log-format", "json", "run", str(path)],
        tmp_path / "sidecar.log",
    )
    try:
        sidecar.wait_for_event("registered", master_url=url)
        master.wait_for_event("service_registered", service_id="web-tls")
        status = http_request("GET", f"http://127.0.0.1:{port}/status").json()
        assert status["registered"] is True and status["master"]["reachable"] is True
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait(10) == 0
        master.wait_for_event("service_deregistered", service_id="web-tls")
    finally:
        sidecar.stop()
