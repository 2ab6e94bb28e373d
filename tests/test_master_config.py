"""The master's options: flag over variable over file, and errors that say where."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from master.config import DEFAULT_STORE, MasterConfig, parse_master_config
from master.shared.yamlfile import ConfigError

MASTER = Path(sys.executable).parent / "picoapi-master"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def problems(argv: list[str], environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_master_config(argv, environ)
    return str(raised.value).splitlines()


def test_defaults() -> None:
    config = parse_master_config([], {})
    assert config == MasterConfig()
    assert (config.listen_host, config.listen_port, config.listen) == (
        "0.0.0.0",
        9500,
        "0.0.0.0:9500",
    )
    assert config.store == DEFAULT_STORE == "sqlite:///./picoapi-data/registry.db"
    assert (config.token_file, config.read_token_file, config.log_format) == (None, None, None)
    assert config.check_concurrency == 512


@pytest.mark.parametrize(
    ("flag", "env", "in_file", "expected"),
    [
        ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", 1),
        (None, "127.0.0.1:2", "127.0.0.1:3", 2),
        (None, None, "127.0.0.1:3", 3),
        ("127.0.0.1:1", None, "127.0.0.1:3", 1),
        (None, None, None, 9500),
    ],
)
def test_flag_wins_over_variable_over_file(
    tmp_path: Path, flag: str | None, env: str | None, in_file: str | None, expected: int
) -> None:
    config_file = write(tmp_path / "master.yaml", f"listen: {in_file}\n" if in_file else "{}\n")
    argv = ["--config", str(config_file), *(["--listen", flag] if flag else [])]
    environ = {"PICOAPI_LISTEN": env} if env else {}
    assert parse_master_config(argv, environ).listen_port == expected


def test_every_option_from_each_source(tmp_path: Path) -> None:
    (tmp_path / "write-tokens").write_text("# rotated 2024-05\nw1\n\nw2\n")
    (tmp_path / "read-tokens").write_text("r1\n")
    text = (
        "listen: '[::1]:9600'\n"
        "store: memory://\n"
        "token_file: write-tokens\n"
        "read_token_file: read-tokens\n"
        "log_format: json\n"
        "check_concurrency: 64\n"
    )
    config_file = write(tmp_path / "master.yaml", text)
    from_file = parse_master_config(["--config", str(config_file)], {})
    assert from_file == MasterConfig(
        listen_host="::1",
        listen_port=9600,
        store="memory://",
        token_file=tmp_path / "write-tokens",  # relative to the file, not the working dir
        read_token_file=tmp_path / "read-tokens",
        log_format="json",
        check_concurrency=64,
        config_file=config_file,
    )
    environ = {
        "PICOAPI_CONFIG": str(config_file),
        "PICOAPI_STORE": "sqlite:///tmp/x.db",
        "PICOAPI_LOG_FORMAT": "console",
        "PICOAPI_CHECK_CONCURRENCY": "8",
    }
    from_env = parse_master_config([], environ)
    assert (from_env.store, from_env.log_format, from_env.check_concurrency) == (
        "sqlite:///tmp/x.db",
        "console",
        8,
    )
    assert from_env.listen_port == 9600  # still from the file PICOAPI_CONFIG names
    argv = ["--store", "memory://", "--log-format", "auto", "--check-concurrency", "2"]
    from_flags = parse_master_config(argv, environ)
    assert (from_flags.store, from_flags.log_format, from_flags.check_concurrency) == (
        "memory://",
        None,
        2,
    )


def test_file_errors_name_file_line_and_key(tmp_path: Path) -> None:
    config_file = write(
        tmp_path / "master.yaml",
        "store: memory://\nlisten: localhost\ntoken_fil: tokens\ncheck_concurrency: 0\n",
    )
    assert problems(["--config", str(config_file)], {}) == [
        f"{config_file}:2: listen: must be HOST:PORT, like 10.0.0.5:8080, got 'localhost'",
        f"{config_file}:3: token_fil: unknown key; did you mean 'token_file'?",
        f"{config_file}:4: check_concurrency: must be 1..10000, got 0",
    ]


def test_a_broken_config_file_is_reported_without_a_traceback(tmp_path: Path) -> None:
    config_file = write(tmp_path / "master.yaml", "listen: [0.0.0.0:9500\n")
    (line,) = problems(["--config", str(config_file)], {})
    assert line.startswith(f"{config_file}:2: YAML syntax error: ")
    missing = tmp_path / "nope.yaml"
    assert problems([], {"PICOAPI_CONFIG": str(missing)}) == [f"{missing}: no such file"]


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["--listen", "9500"], {}, "--listen: must be HOST:PORT, like 10.0.0.5:8080, got '9500'"),
        (
            [],
            {"PICOAPI_LISTEN": "0.0.0.0:99999"},
            "PICOAPI_LISTEN: port must be 0..65535, got 99999",
        ),
        (["--listen", "::1:9500"], {}, "--listen: an IPv6 address needs brackets"),
        (["--store", "etcd2://x"], {}, "--store: unknown store 'etcd2://x'; use one of"),
        (["--listen", "[::1]:"], {}, "--listen: must be HOST:PORT"),
        ([], {"PICOAPI_LOG_FORMAT": "xml"}, "PICOAPI_LOG_FORMAT: must be json, console or auto"),
        (
            [],
            {"PICOAPI_CHECK_CONCURRENCY": "many"},
            "PICOAPI_CHECK_CONCURRENCY: must be an integer",
        ),
    ],
)
def test_flag_and_variable_errors_name_their_source(
    argv: list[str], environ: dict[str, str], expected: str
) -> None:
    (line,) = problems(argv, environ)
    assert line.startswith(expected)


def test_an_empty_variable_counts_as_unset() -> None:
    assert parse_master_config([], {"PICOAPI_LISTEN": ""}).listen_port == 9500


def test_token_files_are_read_at_start(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty", "\n# only a comment\n\n")
    missing = tmp_path / "missing"
    assert problems(["--token-file", str(empty)], {}) == [
        f"--token-file: {empty}: token file holds no token"
    ]
    assert problems([], {"PICOAPI_READ_TOKEN_FILE": str(missing)}) == [
        f"PICOAPI_READ_TOKEN_FILE: {missing}: cannot read token file: No such file or directory"
    ]
    good = write(tmp_path / "tokens", "t1\n")
    assert parse_master_config(["--token-file", str(good)], {}).token_file == good


# --- the real command --------------------------------------------------------------------


def test_command_exits_2_naming_the_field(tmp_path: Path) -> None:
    config_file = write(tmp_path / "master.yaml", "store: memory://\nlisten: nowhere\n")
    result = subprocess.run(
        [str(MASTER), "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert f"{config_file}:2: listen: must be HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_command_help_lists_options_and_variables() -> None:
    result = subprocess.run([str(MASTER), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for word in ("--listen", "--store", "--token-file", "PICOAPI_LISTEN", "PICOAPI_STORE"):
        assert word in result.stdout
