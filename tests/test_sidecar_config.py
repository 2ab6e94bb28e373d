"""The sidecar's service file: `picoapi-sidecar check` over a corpus of broken and valid
files, and `load_config` itself for defaults and environment expansion."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from master.model import ID_PATTERN, Document, loads_json, parse_registration
from master.shared.yamlfile import ConfigError
from sidecar.config import (
    Config,
    ExecCheck,
    HttpCheck,
    ProcessCheck,
    TcpCheck,
    load_config,
    primary_address,
    registration_json,
)

HERE = Path(__file__).resolve().parent
SIDECAR = Path(sys.executable).parent / "picoapi-sidecar"
ERRORS = sorted((HERE / "yaml_errors").glob("*.yaml"))
VALID = sorted((HERE / "yaml_ok").glob("*.yaml"))
# A clean environment for the command: nothing from the developer's shell leaks in.
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSTNAME": "node-7"}


def check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SIDECAR), "check", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**ENV, **(env or {})},
    )


def expectations(path: Path) -> list[tuple[str, int | None]]:
    """The `# expect: message` lines, each with the `# expect-line: N` that follows it."""
    found: list[tuple[str, int | None]] = []
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            found.append((line.removeprefix("# expect: "), None))
        elif line.startswith("# expect-line: "):
            found[-1] = (found[-1][0], int(line.removeprefix("# expect-line: ")))
    return found


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "svc.yaml"
    path.write_text(text)
    return path


# --- the command over the corpus -------------------------------------------------------


def test_every_corpus_file_says_what_it_expects() -> None:
    """A file without an `# expect:` line would pass whatever the checker printed."""
    assert [path.name for path in ERRORS if not expectations(path)] == []


@pytest.mark.parametrize("path", ERRORS, ids=lambda p: p.stem)
def test_check_rejects_broken_file(path: Path) -> None:
    result = check(path)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    for message, line in expectations(path):
        where = f"{path}:{line}: " if line is not None else f"{path}: "
        assert any(out.startswith(where) and message in out for out in lines), (
            f"expected {where}...{message}\n got:\n{result.stderr}"
        )


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_check_accepts_valid_file(path: Path) -> None:
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    body = json.loads(result.stdout)
    registration, _ = parse_registration(body)
    assert registration.id == body["id"]
    assert "openapi" not in body  # `check` never fetches the document


def test_check_prints_the_contract_example() -> None:
    body = json.loads(check(HERE / "yaml_ok" / "contract_example.yaml").stdout)
    assert body == {
        "id": "web-crawler-node-7",
        "name": "web-crawler",
        "address": "127.0.0.1",
        "port": 8080,
        "scheme": "http",
        "tags": ["web_crawler", "examplehost.com", "dirty"],
        "meta": {"team": "data", "version": "1.4.2"},
        "check": {
            "url": "http://127.0.0.1:9501/health",
            "interval": "10s",
            "timeout": "2s",
            "failures_before_critical": 1,
            "successes_before_passing": 1,
            "deregister_after": "10m",
        },
        "instance": f"{socket.gethostname()}:9501",  # who holds the id: host and port
        "draining": False,
    }


def test_check_expands_from_the_environment() -> None:
    env = {"POD_IP": "10.0.0.5", "HOSTNAME": "pod-abc"}
    body = json.loads(check(HERE / "yaml_ok" / "contract_example.yaml", env).stdout)
    assert body["id"] == "web-crawler-pod-abc"
    assert body["address"] == "10.0.0.5"
    assert body["check"]["url"] == "http://10.0.0.5:9501/health"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "/nonexistent/svc.yaml"], "/nonexistent/svc.yaml: no such file"),
        (["check", "/"], "/: is a directory, not a file"),
        (["check"], "the following arguments are required: FILE"),
        (["frobnicate", "x.yaml"], "invalid choice: 'frobnicate'"),
    ],
)
def test_command_line_errors_exit_2(argv: list[str], message: str) -> None:
    result = subprocess.run([str(SIDECAR), *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_file_exits_2(tmp_path: Path) -> None:
    """Any OSError reads the same way; a path through a file fails even for root."""
    path = write(tmp_path, "service: {name: web, port: 80}\n") / "svc.yaml"
    result = check(path)
    assert result.returncode == 2
    assert result.stderr == f"{path}: cannot read: Not a directory\n"


def test_help_points_to_the_yaml_keys() -> None:
    for argv in (["--help"], ["check", "--help"], ["run", "--help"]):
        result = subprocess.run([str(SIDECAR), *argv], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0
        for word in ("service:", "check:", "master:", "sidecar:", "deregister_after"):
            assert word in result.stdout


def test_python_dash_m_runs_the_same_command(tmp_path: Path) -> None:
    path = write(tmp_path, "service: {name: web, port: 8080}\n")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "web"


def test_run_rejects_a_bad_file_like_check(tmp_path: Path) -> None:
    path = write(tmp_path, "service:\n  name: web\n  port: 70000\n")
    result = subprocess.run(
        [str(SIDECAR), "run", str(path)], capture_output=True, text=True, timeout=30, env=ENV
    )
    assert result.returncode == 2
    assert result.stderr == f"{path}:3: service.port: must be 1..65535, got 70000\n"


# --- load_config -----------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "service: {name: web, port: 8080}\n"), {})
    service = config.service
    assert service.id.startswith("web-") and re.fullmatch(ID_PATTERN, service.id)
    assert service.address == primary_address()
    assert (service.scheme, service.tags, service.meta, service.openapi) == ("http", (), {}, None)
    assert config.check.probe == TcpCheck("127.0.0.1", 8080)
    assert (config.check.interval, config.check.timeout) == (10.0, 2.0)
    assert (config.check.failures_before_critical, config.check.successes_before_passing) == (
        1,
        1,
    )
    assert config.check.deregister_after == 600.0
    assert config.master.urls == ("http://127.0.0.1:9500",)
    assert config.master.token is None
    assert (config.sidecar.listen_host, config.sidecar.listen_port) == ("0.0.0.0", 9501)
    assert config.sidecar.listen == "0.0.0.0:9501"
    assert config.sidecar.advertise == f"{service.address}:9501"
    assert config.sidecar.resync == 30.0
    assert config.sidecar.deregister_on_exit is True


def test_default_id_is_name_and_hostname(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "service: {name: web, port: 8080}\n"), {})
    host = re.sub(r"[^A-Za-z0-9._:@-]+", "-", socket.gethostname()).strip("-._:@")
    assert config.service.id == f"web-{host}"[:128]


def test_primary_address_is_an_ipv4_address() -> None:
    socket.inet_aton(primary_address())


def test_pod_ip_is_the_default_address(tmp_path: Path) -> None:
    path = write(tmp_path, "service: {name: web, port: 8080}\nsidecar: {listen: 0.0.0.0:9700}\n")
    config = load_config(path, {"POD_IP": "10.1.2.3"})
    assert config.service.address == "10.1.2.3"
    assert config.sidecar.advertise == "10.1.2.3:9700"
    assert registration_json(config, None)["check"]["url"] == "http://10.1.2.3:9700/health"


@pytest.mark.parametrize(
    ("sidecar_yaml", "advertise"),
    [
        ("{listen: '127.0.0.1:9800'}", "127.0.0.1:9800"),  # bound to one address: that one
        ("{listen: '[::]:9800'}", "10.1.2.3:9800"),  # bound to all: the service's address
        ("{advertise: sidecar.internal}", "sidecar.internal:9501"),  # no port: listen's
        ("{advertise: '[fd00::5]:80'}", "[fd00::5]:80"),
    ],
)
def test_advertise(tmp_path: Path, sidecar_yaml: str, advertise: str) -> None:
    path = write(tmp_path, f"service: {{name: web, port: 8080}}\nsidecar: {sidecar_yaml}\n")
    assert load_config(path, {"POD_IP": "10.1.2.3"}).sidecar.advertise == advertise


def test_bad_pod_ip_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "service: {name: web, port: 8080}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {"POD_IP": "10.0.0.1/24"})
    assert str(raised.value) == (
        f"{path}: POD_IP: must be a host name or IP address, got '10.0.0.1/24'"
    )


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${NAME}", {"NAME": "web"}, "web"),
        ("${NAME:-fallback}", {}, "fallback"),
        ("${NAME:-fallback}", {"NAME": ""}, "fallback"),  # as in the shell: empty is unset
        ("${NAME:-}x", {}, "x"),
        ("a-${A}-${B:-b}-c", {"A": "1"}, "a-1-b-c"),
        ("$${NAME}", {"NAME": "web"}, "${NAME}"),
        ("price $$5", {}, "price $5"),
        ("a$b", {}, "a$b"),
        ("'${NAME}'", {"NAME": "web"}, "web"),  # quoted values expand too
    ],
)
def test_expansion(tmp_path: Path, value: str, environ: dict[str, str], expected: str) -> None:
    path = write(tmp_path, f"service:\n  name: web\n  port: 80\n  meta:\n    k: {value}\n")
    assert load_config(path, environ).service.meta == {"k": expected}


def test_expansion_retypes_plain_values(tmp_path: Path) -> None:
    """`port: ${PORT}` is the integer 8080, as `port: 8080` would be; quoted stays text."""
    text = "service:\n  name: web\n  port: ${PORT}\nsidecar:\n  deregister_on_exit: ${D:-no}\n"
    config = load_config(write(tmp_path, text), {"PORT": "8080"})
    assert config.service.port == 8080
    assert config.sidecar.deregister_on_exit is False
    quoted = write(tmp_path, 'service:\n  name: web\n  port: "${PORT}"\n')
    with pytest.raises(ConfigError, match=r"svc.yaml:3: service.port: must be an integer"):
        load_config(quoted, {"PORT": "8080"})


def test_unquoted_reference_in_flow_style_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "service: {name: web, port: ${PORT}}\n")
    with pytest.raises(ConfigError, match=r"svc.yaml:1: YAML syntax error: .*quote"):
        load_config(path, {"PORT": "80"})


def test_unset_variable_is_reported_once(tmp_path: Path) -> None:
    path = write(tmp_path, "service:\n  name: web\n  port: ${PORT}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert [str(p) for p in raised.value.problems] == [
        f"{path}:3: service.port: ${{PORT}} is not set and has no default "
        "(write ${PORT:-value} for one)"
    ]


def test_master_url_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "service: {name: web, port: 8080}\n")
    environ = {"PICOAPI_MASTER_URL": "http://a:9500/, http://b:9500"}
    assert load_config(path, environ).master.urls == ("http://a:9500", "http://b:9500")
    with pytest.raises(ConfigError, match="PICOAPI_MASTER_URL: must be an http"):
        load_config(path, {"PICOAPI_MASTER_URL": "a:9500"})


def test_the_file_wins_over_picoapi_master_url(tmp_path: Path) -> None:
    path = write(tmp_path, "service: {name: web, port: 80}\nmaster: {url: 'http://m:1'}\n")
    assert load_config(path, {"PICOAPI_MASTER_URL": "http://env:9500"}).master.urls == (
        "http://m:1",
    )


def test_token_file_is_read_relative_to_the_file_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("\n  abc123 \n")
    path = write(tmp_path, "service: {name: web, port: 80}\nmaster: {token_file: secrets/token}\n")
    assert load_config(path, {}).master.token == "abc123"


def test_token_file_has_the_masters_format_with_comments(tmp_path: Path) -> None:
    """One token-file format for both daemons: `#` comments and blank lines are skipped."""
    (tmp_path / "token").write_text("# rotated 2026-11-30\n\n  s3cret \n")
    path = write(tmp_path, "service: {name: web, port: 80}\nmaster: {token_file: token}\n")
    assert load_config(path, {}).master.token == "s3cret"


def test_empty_token_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    path = write(tmp_path, "service: {name: web, port: 80}\nmaster:\n  token_file: token\n")
    with pytest.raises(ConfigError, match=r"svc.yaml:3: master.token_file: .*token' is empty"):
        load_config(path, {})


@pytest.mark.parametrize(
    ("check_yaml", "probe"),
    [
        ("http: /healthz", HttpCheck("http://127.0.0.1:8080/healthz")),
        ("http: 'https://10.0.0.1/ready'", HttpCheck("https://10.0.0.1/ready")),
        ("tcp: true", TcpCheck("127.0.0.1", 8080)),
        ("tcp: 'db:5432'", TcpCheck("db", 5432)),
        ("tcp: '[::1]:5432'", TcpCheck("::1", 5432)),
        ("process: {name: nginx}", ProcessCheck(name="nginx")),
        ("process: {cmdline: 'node server.js'}", ProcessCheck(cmdline="node server.js")),
        ("exec: [/bin/true, -q]", ExecCheck(("/bin/true", "-q"))),
    ],
)
def test_probes(tmp_path: Path, check_yaml: str, probe: object) -> None:
    path = write(tmp_path, f"service: {{name: web, port: 8080}}\ncheck:\n  {check_yaml}\n")
    assert load_config(path, {}).check.probe == probe


def test_a_check_kind_without_a_value(tmp_path: Path) -> None:
    path = write(tmp_path, "service: {name: web, port: 80}\ncheck:\n  http:\n")
    with pytest.raises(ConfigError, match=r"svc.yaml:3: check.http: needs a value$"):
        load_config(path, {})


def test_pidfile_is_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "service: {name: web, port: 80}\ncheck: {process: {pidfile: app.pid}}\n")
    assert load_config(path, {}).check.probe == ProcessCheck(pidfile=str(tmp_path / "app.pid"))


def test_https_service_resolves_paths_with_its_scheme(tmp_path: Path) -> None:
    text = (
        "service:\n  name: web\n  port: 8443\n  scheme: https\n  openapi: /spec\n"
        "check:\n  http: /hz\n"
    )
    config = load_config(write(tmp_path, text), {})
    assert config.service.openapi == "https://127.0.0.1:8443/spec"
    assert config.check.probe == HttpCheck("https://127.0.0.1:8443/hz")


def test_timeout_defaults_below_a_short_interval(tmp_path: Path) -> None:
    path = write(tmp_path, "service: {name: web, port: 80}\ncheck: {tcp: true, interval: 1s}\n")
    assert load_config(path, {}).check.timeout == 0.5


def test_every_problem_is_reported_sorted_by_line(tmp_path: Path) -> None:
    text = (
        "service:\n"
        "  name: Web\n"  # 2
        "  port: 0\n"  # 3
        "  tags: [ok, '']\n"  # 4
        "  colour: red\n"  # 5
        "check:\n"
        "  exec: pg_isready\n"  # 7
        "sidecar:\n"
        "  resync: 2h\n"  # 9
    )
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text), {})
    assert [(p.line, p.field) for p in raised.value.problems] == [
        (2, "service.name"),
        (3, "service.port"),
        (4, "service.tags[1]"),
        (5, "service.colour"),
        (7, "check.exec"),
        (9, "sidecar.resync"),
    ]


def test_registration_is_what_the_master_accepts(tmp_path: Path) -> None:
    config = load_config(HERE / "yaml_ok" / "exec_check.yaml", {"DB_PORT": "6432"})
    body = registration_json(config, None)
    registration, _ = parse_registration(body)
    assert registration == config.registration()
    assert registration.port == 6432
    assert registration.scheme == "https"
    assert registration.meta == {"owner": "team-$payments"}
    assert registration.check is not None
    assert registration.check.url == "http://db-1.internal:9601/health"
    assert (registration.check.interval, registration.check.deregister_after) == (90.0, 0.0)
    assert config.master.urls == ("http://master-a:9500", "https://master-b.example.com")
    assert config.master.token is None
    assert config.sidecar.listen == "[::]:9601"
    assert config.sidecar.deregister_on_exit is False


def test_registration_json_carries_openapi_only_when_given(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "service: {name: web, port: 80}\n"), {})
    document = {"openapi": "3.0.3", "info": {}, "paths": {}}
    assert "openapi" not in registration_json(config, None)
    assert registration_json(config, document)["openapi"] == document
    change = parse_registration(registration_json(config, document))[1]
    assert isinstance(change, Document) and loads_json(change.body) == document


def test_loading_twice_gives_equal_configs(tmp_path: Path) -> None:
    """A reload that changes nothing must compare equal, so nothing is re-sent."""
    path = HERE / "yaml_ok" / "contract_example.yaml"
    first: Config = load_config(path, ENV)
    assert load_config(path, ENV) == first


def test_loopback_advertise_for_a_remote_service_warns(tmp_path: Path) -> None:
    """Valid, but a master on another host could never check it: say so, with the line."""
    text = "service: {name: web, port: 80, address: 10.0.0.5}\nsidecar:\n  listen: 127.0.0.1:9501\n"
    config = load_config(write(tmp_path, text), {})
    assert config.sidecar.advertise == "127.0.0.1:9501"  # listening on one address: that one
    assert len(config.warnings) == 1
    assert config.warnings[0].startswith(f"{tmp_path / 'svc.yaml'}:3: sidecar.listen: ")
    assert "loopback" in config.warnings[0] and "10.0.0.5" in config.warnings[0]
    wildcard = load_config(
        write(tmp_path, "service: {name: web, port: 80, address: 10.0.0.5}\n"), {}
    )
    assert wildcard.sidecar.advertise == "10.0.0.5:9501" and wildcard.warnings == ()
    local = load_config(write(tmp_path, "service: {name: web, port: 80, address: 127.0.0.1}\n"), {})
    assert local.warnings == ()
