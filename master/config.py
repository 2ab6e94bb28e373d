"""The master's options, from flags, `PICOAPI_*` variables and a YAML file, parsed once.

A flag wins over a variable, a variable over the file, the file over the default. Each
option is one row of `OPTIONS`: its YAML key, and from that its flag (`--token-file`) and
variable (`PICOAPI_TOKEN_FILE`), so the three sources cannot disagree on names. Every
problem is reported at once, named by where the value came from: `master.yaml:3: listen:
...`, `PICOAPI_LISTEN: ...` or `--listen: ...`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from master.cluster import DEFAULT_MEMBER_TTL
from master.eviction import DEFAULT_HOLD_MAX, DEFAULT_SHARE
from master.model import (
    DeregisterAfter,
    Duration,
    FieldError,
    check_int,
    check_text,
    format_duration,
)
from master.policy import IPNetwork, check_allow_option
from master.shared.daemon import package_version
from master.shared.tokens import TokenFileError, read_tokens
from master.shared.yamlfile import (
    ConfigError,
    Problem,
    check_host_port,
    join_host_port,
    load_document,
)
from master.store import STORES


class MemberTTL(Duration):
    """The membership lease: etcd's minimum is about 2 s with its default timings."""

    __slots__ = ()
    low, high, bounds = 2.0, 300.0, "2s..5m"


DEFAULT_LISTEN: Final = ("0.0.0.0", 9500)
DEFAULT_STORE: Final = "sqlite:///./picoapi-data/registry.db"
DEFAULT_CHECK_CONCURRENCY: Final = 512
DEFAULT_MAX_CONNECTIONS: Final = 10_000
DEFAULT_MAX_WATCHERS: Final = 8_000
LIMIT_MAX: Final = 1_000_000
DEFAULT_READ_TIMEOUT: Final = 10.0
DEFAULT_MAX_DOCUMENT_BYTES: Final = 128 << 20


class EvictionHold(Duration):
    __slots__ = ()
    low, high, bounds = 0.0, 86_400.0, "0s..24h"


class ReadTimeout(Duration):
    __slots__ = ()
    low, high, bounds = 0.1, 600.0, "100ms..10m"


CHECK_CONCURRENCY_MAX: Final = 10_000
LOG_FORMATS: Final = ("json", "console", "auto")
CONFIG_ENV: Final = "PICOAPI_CONFIG"


@dataclass(frozen=True, slots=True)
class MasterConfig:
    listen_host: str = DEFAULT_LISTEN[0]
    listen_port: int = DEFAULT_LISTEN[1]
    store: str = DEFAULT_STORE
    token_file: Path | None = None  # write (and read) tokens, one a line
    read_token_file: Path | None = None  # when set, reads need a read or a write token
    log_format: str | None = None  # json | console | None: console on a TTY, else json
    check_concurrency: int = DEFAULT_CHECK_CONCURRENCY
    member_ttl: float = DEFAULT_MEMBER_TTL
    check_allow: tuple[IPNetwork, ...] = ()  # empty: all but link-local and metadata
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_watchers: int = DEFAULT_MAX_WATCHERS
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    picoapi_deregister_after: float = 600.0  # picoapi services' deregister_after
    eviction_share: float = DEFAULT_SHARE  # of one name's instances reaped a minute, at most
    eviction_hold_max: float = DEFAULT_HOLD_MAX  # a reap held back this long goes ahead
    tls_cert: Path | None = None  # with tls_key: serve HTTPS
    tls_key: Path | None = None
    config_file: Path | None = None

    @property
    def listen(self) -> str:
        return join_host_port(self.listen_host, self.listen_port)


# --- one check per option: (value, field, base directory for relative paths) -----------


def _check_listen(value: object, field: str, base: Path) -> tuple[str, int]:
    return check_host_port(value, field, allow_zero=True)


def _check_store(value: object, field: str, base: Path) -> str:
    url = check_text(value, field, 4096)
    scheme = urlsplit(url).scheme
    if scheme not in STORES:
        known = ", ".join(f"{name}://" for name in STORES)
        raise FieldError(field, f"unknown store {url!r}; use one of {known}")
    return url


def _check_token_file(value: object, field: str, base: Path) -> Path:
    """Read at start, so a missing or empty token file stops the master before it serves."""
    path = base / check_text(value, field, 4096)
    try:
        read_tokens(path)
    except TokenFileError as exc:
        raise FieldError(field, str(exc)) from None
    return path


def _check_log_format(value: object, field: str, base: Path) -> str | None:
    if value not in LOG_FORMATS:
        raise FieldError(field, f"must be json, console or auto, got {value!r}")
    return None if value == "auto" else str(value)


def _check_member_ttl(value: object, field: str, base: Path) -> float:
    return float(MemberTTL.parse(value, field))


def _check_readable(value: object, field: str, base: Path) -> Path:
    path = base / check_text(value, field, 4096)
    try:
        path.read_bytes()
    except OSError as exc:
        raise FieldError(field, f"cannot read {str(path)!r}: {exc.strerror}") from None
    return path


def _check_bytes(value: object, field: str, base: Path) -> int:
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    return check_int(value, field, 1 << 20, 1 << 40)


def _check_deregister_after(value: object, field: str, base: Path) -> float:
    return float(DeregisterAfter.parse(value, field))


def _check_eviction_share(value: object, field: str, base: Path) -> float:
    try:
        share = float(str(value).strip().removesuffix("%")) / (100 if "%" in str(value) else 1)
    except ValueError:
        share = math.nan
    if isinstance(value, bool) or not 0 < share <= 1:
        raise FieldError(field, f"must be a share in (0, 1] such as 0.5 or 50%, got {value!r}")
    return share


def _check_eviction_hold(value: object, field: str, base: Path) -> float:
    return float(EvictionHold.parse(value, field))


def _check_read_timeout(value: object, field: str, base: Path) -> float:
    return float(ReadTimeout.parse(value, field))


def _check_limit(value: object, field: str, base: Path) -> int:
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    return check_int(value, field, 1, LIMIT_MAX)


def _check_allow(value: object, field: str, base: Path) -> tuple[IPNetwork, ...]:
    return check_allow_option(value, field)


def _check_concurrency(value: object, field: str, base: Path) -> int:
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    return check_int(value, field, 1, CHECK_CONCURRENCY_MAX)


@dataclass(frozen=True, slots=True)
class Option:
    key: str  # the YAML key; the flag and variable are derived from it
    metavar: str
    help: str
    check: Callable[[object, str, Path], Any]

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return "PICOAPI_" + self.key.upper()


OPTIONS: Final = (
    Option("listen", "HOST:PORT", "where to serve the API (default 0.0.0.0:9500)", _check_listen),
    Option(
        "store",
        "URL",
        "sqlite:///relative/path, sqlite:////absolute/path, etcd://HOST:PORT[,HOST:PORT...]"
        f"[/PREFIX] or memory:// (default {DEFAULT_STORE})",
        _check_store,
    ),
    Option(
        "token_file",
        "FILE",
        "bearer tokens for PUT and DELETE, one a line (# comments allowed); "
        "default: no token needed",
        _check_token_file,
    ),
    Option(
        "read_token_file",
        "FILE",
        "tokens for reads; when given, a GET needs one of these or a write token",
        _check_token_file,
    ),
    Option(
        "log_format",
        "json|console",
        "log format (default: console on a TTY, else json)",
        _check_log_format,
    ),
    Option(
        "member_ttl",
        "DURATION",
        "etcd only: how long a master's share of the checks waits for it after it dies "
        f"(its membership lease; default {format_duration(DEFAULT_MEMBER_TTL)})",
        _check_member_ttl,
    ),
    Option(
        "check_allow",
        "CIDR[,CIDR...]",
        "the only networks the master may health-check (default: all but link-local "
        "169.254.0.0/16, fe80::/10 and the cloud metadata addresses)",
        _check_allow,
    ),
    Option(
        "max_connections",
        "N",
        "open connections at most; past them a new one gets 503 with Retry-After (default "
        f"{DEFAULT_MAX_CONNECTIONS}, lowered to what the descriptor limit leaves)",
        _check_limit,
    ),
    Option(
        "max_watchers",
        "N",
        f"blocking queries waiting at once, at most; past them 503 (default "
        f"{DEFAULT_MAX_WATCHERS})",
        _check_limit,
    ),
    Option(
        "picoapi_deregister_after",
        "DURATION",
        "services registered through the original picoapi routes are removed after being "
        "critical this long; 0 = never (default 10m)",
        _check_deregister_after,
    ),
    Option(
        "eviction_share",
        "SHARE",
        "the mass-eviction guard: of one service name's instances this master checks, at "
        "most this share (at least one) is removed for deregister_after in any minute; the "
        "rest wait "
        f"(default {DEFAULT_SHARE}; 1 = no guard)",
        _check_eviction_share,
    ),
    Option(
        "eviction_hold_max",
        "DURATION",
        "a removal the guard holds back goes ahead after this long "
        f"(default {format_duration(DEFAULT_HOLD_MAX)})",
        _check_eviction_hold,
    ),
    Option(
        "tls_cert",
        "FILE",
        "serve HTTPS with this certificate chain (PEM); needs --tls-key",
        _check_readable,
    ),
    Option("tls_key", "FILE", "the private key of --tls-cert (PEM)", _check_readable),
    Option(
        "max_document_bytes",
        "BYTES",
        "the OpenAPI documents held, each distinct one once, at most this many bytes in "
        "all; a new one past it is refused with 413 (default 134217728: 128 MiB)",
        _check_bytes,
    ),
    Option(
        "read_timeout",
        "DURATION",
        "a request's headers must arrive within this of its first byte, its body within "
        "three times it; a slower client is cut off (default 10s)",
        _check_read_timeout,
    ),
    Option(
        "check_concurrency",
        "N",
        f"health checks run at once, at most (default {DEFAULT_CHECK_CONCURRENCY})",
        _check_concurrency,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picoapi-master",
        description="Run the PicoAPI registry: services register over HTTP (or through a\n"
        "picoapi-sidecar); the master checks their health and serves the catalog.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"a YAML file of these options, keys without dashes (also {CONFIG_ENV})",
    )
    for option in OPTIONS:
        parser.add_argument(option.flag, metavar=option.metavar, help=option.help)
    return parser


def _epilog() -> str:
    variables = ", ".join(option.env for option in OPTIONS)
    return (
        "Every option also reads a variable: "
        f"{variables}.\nA flag wins over a variable, a variable over the --config file:\n\n"
        "  listen: 0.0.0.0:9500\n"
        "  store: sqlite:////var/lib/picoapi/registry.db   # four slashes: an absolute path\n"
        "  token_file: tokens        # relative paths: from the file's directory\n"
        "\nexit status: 0 after SIGTERM/SIGINT, 2 on bad configuration"
    )


def parse_master_config(argv: list[str], environ: Mapping[str, str]) -> MasterConfig:
    """Options in force; ConfigError lists every problem. --help and unknown flags exit
    through argparse, as usual for a command line."""
    args = build_parser().parse_args(argv)
    problems: list[Problem] = []
    config_file = args.config or environ.get(CONFIG_ENV) or None
    doc = None
    if config_file is not None:
        doc = load_document(config_file, environ)
        doc.section("", [option.key for option in OPTIONS])
    values: dict[str, Any] = {}
    for option in OPTIONS:
        flag = getattr(args, option.key)
        env = environ.get(option.env) or None
        if flag is not None or env is not None:
            source = option.flag if flag is not None else option.env
            try:
                values[option.key] = option.check(flag if flag is not None else env, source, Path())
            except FieldError as exc:
                problems.append(Problem("", None, exc.field, exc.message))
        elif doc is not None and doc.has(option.key):
            base = Path(config_file or ".").parent
            value = doc.check(option.key, option.check, base)
            if value is not None:  # null in the file, or "auto": the default
                values[option.key] = value
    if doc is not None:
        by_line = sorted(doc.problems, key=lambda p: p.line or 0)
        problems = [*by_line, *problems]
    if ("tls_cert" in values) != ("tls_key" in values):
        given, missing = ("--tls-cert", "--tls-key")[:: 1 if "tls_cert" in values else -1]
        problems.append(Problem("", None, missing, f"{given} needs {missing} too"))
    if problems:
        raise ConfigError(problems)
    host, port = values.pop("listen", DEFAULT_LISTEN)
    return MasterConfig(
        listen_host=host,
        listen_port=port,
        config_file=Path(config_file) if config_file else None,
        **values,
    )
