"""The example files in configs/: each passes `picoapi-sidecar check` as an operator runs it,
says what its comments say, and the demo's files fit the demo's services."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from master.config import OPTIONS, parse_master_config
from tests.conftest import BIN, ROOT

CONFIGS = ROOT / "configs"
DEMO = CONFIGS / "demo"
# Documentation addresses (RFC 5737): `check` connects nowhere, and these route nowhere.
POD_ENV = {"POD_IP": "192.0.2.10", "POD_NAME": "orders-api-0"}
EXPECTED_EXAMPLES = {
    "minimal.yaml",
    "http-openapi.yaml",
    "tcp-database.yaml",
    "process.yaml",
    "exec.yaml",
    "kubernetes.yaml",
}
SIDECAR_FILES = sorted(CONFIGS.glob("*.yaml")) + sorted(DEMO.glob("*.yaml"))
SIDECAR_FILES.remove(CONFIGS / "master.yaml")


def check_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without anything a service file may read, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("POD_IP", "POD_NAME", "HOSTNAME") and not key.startswith("PICOAPI_")
    }
    return {**env, **extra}


def run_check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "picoapi-sidecar"), "check", str(path)],
        env=check_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sidecar_check(path: Path, env: dict[str, str]) -> dict[str, Any]:
    """`picoapi-sidecar check FILE`: exit 0 and the registration it prints, as JSON."""
    proc = run_check(path, env)
    assert proc.returncode == 0, f"{path.name}: exit {proc.returncode}\n{proc.stderr}"
    registration = json.loads(proc.stdout)
    assert isinstance(registration, dict)
    return registration


@pytest.fixture
def token_env(tmp_path: Path) -> dict[str, str]:
    """POD_* and a token file for the files that read a mounted token."""
    token = tmp_path / "token"
    token.write_text("example-token\n")
    return {**POD_ENV, "PICOAPI_TOKEN_FILE": str(token)}


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_every_example_is_there() -> None:
    assert {path.name for path in CONFIGS.glob("*.yaml")} == EXPECTED_EXAMPLES | {"master.yaml"}
    assert {path.name for path in DEMO.glob("*.yaml")} == {"static-site.yaml", "node-api.yaml"}


@pytest.mark.parametrize("path", SIDECAR_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_sidecar_file_passes_check(path: Path, token_env: dict[str, str]) -> None:
    registration = sidecar_check(path, token_env)
    service = load(path)["service"]
    assert registration["name"] == service["name"]
    assert registration["port"] == service["port"]
    assert registration["check"]["url"].endswith("/health")


def test_check_rejects_a_broken_example(tmp_path: Path) -> None:
    """The examples pass because they are right, not because `check` passes anything."""
    broken = tmp_path / "broken.yaml"
    broken.write_text((CONFIGS / "minimal.yaml").read_text().replace("port: 8080", "port: 80800"))
    proc = run_check(broken, {})
    assert proc.returncode == 2
    assert "service.port" in proc.stderr


def test_minimal_is_name_and_port_and_its_comment_tells_the_defaults() -> None:
    path = CONFIGS / "minimal.yaml"
    assert load(path) == {"service": {"name": "hello", "port": 8080}}
    registration = sidecar_check(path, {})
    assert registration["id"].startswith("hello-")
    assert registration["check"]["url"].endswith(":9501/health")
    check = registration["check"]
    assert (check["interval"], check["timeout"], check["deregister_after"]) == ("10s", "2s", "10m")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("http-openapi.yaml", "http"),
        ("tcp-database.yaml", "tcp"),
        ("process.yaml", "process"),
        ("exec.yaml", "exec"),
        ("kubernetes.yaml", "http"),
    ],
)
def test_example_shows_its_kind_of_check(name: str, kind: str) -> None:
    assert kind in load(CONFIGS / name)["check"]


def test_http_example_shows_tags_meta_and_openapi() -> None:
    service = load(CONFIGS / "http-openapi.yaml")["service"]
    assert service["tags"] and service["meta"]
    assert service["openapi"] == "/openapi.json"


def test_database_example_is_postgresql() -> None:
    data = load(CONFIGS / "tcp-database.yaml")
    assert data["service"]["port"] == 5432
    assert data["check"]["tcp"] is True


def test_exec_example_runs_pg_isready_and_mentions_a_debian_command() -> None:
    path = CONFIGS / "exec.yaml"
    assert load(path)["check"]["exec"][0] == "/usr/bin/pg_isready"
    assert "exec: [/bin/true]" in path.read_text()


def test_kubernetes_example_takes_its_identity_from_the_pod(token_env: dict[str, str]) -> None:
    registration = sidecar_check(CONFIGS / "kubernetes.yaml", token_env)
    assert registration["id"] == POD_ENV["POD_NAME"]
    assert registration["address"] == POD_ENV["POD_IP"]
    assert registration["check"]["url"] == f"http://{POD_ENV['POD_IP']}:9501/health"


def test_kubernetes_example_refuses_to_run_outside_a_pod(token_env: dict[str, str]) -> None:
    """No POD_IP, no default: better no start than advertising 127.0.0.1 from a pod."""
    env = {key: value for key, value in token_env.items() if key != "POD_IP"}
    proc = run_check(CONFIGS / "kubernetes.yaml", env)
    assert proc.returncode == 2
    assert "POD_IP" in proc.stderr


# --- the demo ----------------------------------------------------------------------------

# (file, service port, sidecar listen port): what `make demo` starts them with.
DEMO_PORTS = [("static-site.yaml", 8081, 9601), ("node-api.yaml", 8082, 9602)]


@pytest.mark.parametrize(("name", "port", "sidecar_port"), DEMO_PORTS)
def test_demo_service_ports(name: str, port: int, sidecar_port: int) -> None:
    data = load(DEMO / name)
    assert data["master"]["url"] == "http://127.0.0.1:9500"
    assert data["sidecar"]["listen"] == f"127.0.0.1:{sidecar_port}"
    registration = sidecar_check(DEMO / name, {})
    assert registration["port"] == port
    assert registration["address"] == "127.0.0.1"
    assert registration["check"]["url"] == f"http://127.0.0.1:{sidecar_port}/health"


def test_demo_static_site_serves_what_its_sidecar_asks_for() -> None:
    """`python3 -m http.server` serves site/ as is: the check and the OpenAPI paths must be
    files there."""
    service_file = load(DEMO / "static-site.yaml")
    site = DEMO / "site"
    for url_path in (service_file["check"]["http"], service_file["service"]["openapi"]):
        assert (site / url_path.lstrip("/")).is_file(), url_path
    assert (site / "healthz").read_text().strip()
    document = json.loads((site / "openapi.json").read_text())
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] and document["info"]["version"]
    assert "/healthz" in document["paths"]


# --- the master's file -------------------------------------------------------------------


def test_master_file_parses_and_lists_every_option() -> None:
    path = CONFIGS / "master.yaml"
    assert set(load(path)) == {option.key for option in OPTIONS}
    config = parse_master_config(["--config", str(path)], {})
    assert config.listen == "0.0.0.0:9500"
    assert config.store.startswith("sqlite:///")
    assert config.token_file is None


def test_master_file_with_tokens_as_its_comment_says(tmp_path: Path) -> None:
    """`token_file: tokens` is read from beside the file, whatever the working directory."""
    (tmp_path / "tokens").write_text("# writers\nwrite-token\n")
    (tmp_path / "read-tokens").write_text("read-token\n")
    data = load(CONFIGS / "master.yaml")
    data.update(token_file="tokens", read_token_file="read-tokens")
    path = tmp_path / "master.yaml"
    path.write_text(yaml.safe_dump(data))
    config = parse_master_config(["--config", str(path)], {})
    assert config.token_file == tmp_path / "tokens"
    assert config.read_token_file == tmp_path / "read-tokens"
