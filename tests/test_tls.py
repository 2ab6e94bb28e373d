"""The master over HTTPS (--tls-cert, --tls-key), with certificates made for the test."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

trustme = pytest.importorskip("trustme")


@pytest.fixture
def authority() -> Any:
    return trustme.CA()


def pem_files(authority: Any, tmp_path: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    cert = authority.issue_cert(host)
    chain, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


def test_the_master_serves_https_that_a_client_verifies(
    start_master: Any, authority: Any, tmp_path: Path
) -> None:
    chain, key = pem_files(authority, tmp_path)
    master = start_master("--tls-cert", str(chain), "--tls-key", str(key), store="memory://")
    assert master.wait_for_event("master_started")["scheme"] == "https"
    url = master.url.replace("http://", "https://")
    context = ssl.create_default_context()
    authority.configure_trust(context)
    with urllib.request.urlopen(f"{url}/healthz", context=context, timeout=5) as answer:
        assert json.load(answer)["status"] == "ok"
    with pytest.raises(urllib.error.URLError):  # a client that does not trust the CA: refused
        urllib.request.urlopen(f"{url}/healthz", context=ssl.create_default_context(), timeout=5)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP: no answer
        urllib.request.urlopen(f"{master.url}/healthz", timeout=5)


def test_a_certificate_without_its_key_is_a_configuration_error(
    authority: Any, tmp_path: Path
) -> None:
    chain, _ = pem_files(authority, tmp_path)
    master = Path(sys.executable).parent / "picoapi-master"
    result = subprocess.run(
        [str(master), "--tls-cert", str(chain), "--store", "memory://"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--tls-key: --tls-cert needs --tls-key too" in result.stderr


def test_a_key_that_does_not_match_exits_2(
    start_master: Any, authority: Any, tmp_path: Path
) -> None:
    chain, _ = pem_files(authority, tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = pem_files(trustme.CA(), tmp_path / "other")
    tls = ("--tls-cert", str(chain), "--tls-key", str(other_key))
    master = start_master(*tls, store="memory://", wait=False)
    assert master.wait(10) == 2
    assert "--tls-cert/--tls-key" in master.log_path.read_text()
