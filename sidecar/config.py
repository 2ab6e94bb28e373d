"""The sidecar's YAML description, parsed once into frozen, typed objects.

`load_config` is the one way in: `picoapi-sidecar check`, start-up and every reload run it.
It reports every problem of a file at once (`svc.yaml:7: service.port: must be 1..65535,
got 70000`), and a file it accepts always yields a registration the master accepts, because
each field goes through the same master.model checks the master runs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from master.model import (
    ADDRESS_MAX,
    DEFAULT_DEREGISTER_AFTER,
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    ID_MAX,
    INTERVAL_MAX,
    INTERVAL_MIN,
    KEEP,
    THRESHOLD_MAX,
    CheckSpec,
    DeregisterAfter,
    Duration,
    FieldError,
    Interval,
    Registration,
    Timeout,
    check_id,
    check_int,
    check_meta,
    check_name,
    check_tags,
    check_text,
    check_url,
    parse_registration,
    registration_body,
    to_builtins,
)
from master.shared.tokens import TokenFileError, read_tokens
from master.shared.yamlfile import (
    ConfigError,
    Document,
    Problem,
    check_bool,
    check_host_port,
    join_host_port,
    parse_document,
    type_name,
)

DEFAULT_MASTER_URL: Final = "http://127.0.0.1:9500"
DEFAULT_LISTEN: Final = ("0.0.0.0", 9501)
DEFAULT_RESYNC: Final = 30.0
LOOPBACK: Final = "127.0.0.1"
ARG_MAX: Final = 4096
PATH_MAX: Final = 4096
# A service file is a few hundred bytes; anything near this is a mistake (a log written over
# it, a binary), refused before it is parsed.
FILE_MAX: Final = 1 << 20
FILE_MAX_TEXT: Final = "1 MiB"
TLS_FILE_MAX: Final = 1 << 20
# Routed nowhere: "connecting" a UDP socket to it sends nothing but picks the source
# address of the default route, which is this host's primary address.
_PROBE_ADDRESS: Final = ("10.255.255.255", 1)
_WILDCARDS: Final = ("0.0.0.0", "::", "")
_ID_BAD_CHARS: Final = re.compile(r"[^A-Za-z0-9._:@-]+")

_TOP_KEYS: Final = ("service", "check", "master", "sidecar")
_SERVICE_KEYS: Final = ("name", "id", "address", "port", "scheme", "tags", "meta", "openapi")
_PROBE_KINDS: Final = ("http", "tcp", "process", "exec")
_CHECK_KEYS: Final = (
    *_PROBE_KINDS,
    "interval",
    "timeout",
    "failures_before_critical",
    "successes_before_passing",
    "deregister_after",
)
_PROCESS_KEYS: Final = ("pidfile", "name", "cmdline")
_TLS_KEYS: Final = ("ca_file", "cert_file", "key_file")
_MASTER_KEYS: Final = ("url", "token", "token_file", "ca_file", "cert_file", "key_file")
_SIDECAR_KEYS: Final = (
    "listen",
    "advertise",
    "resync",
    "deregister_on_exit",
    "token_file",
    "drain_grace",
    "discovery_idle",
)

SCHEMA: Final = {
    "service": _SERVICE_KEYS,
    "check": _CHECK_KEYS,
    "check.process": _PROCESS_KEYS,
    "master": _MASTER_KEYS,
    "sidecar": _SIDECAR_KEYS,
}
"""Every key the file may hold, by section: the README's reference is tested against it."""


class Resync(Duration):
    """How often the sidecar re-asserts its registration."""

    __slots__ = ()
    low, high, bounds = INTERVAL_MIN, INTERVAL_MAX, "1s..1h"


class DrainGrace(Duration):
    """How long a leaving sidecar reports `draining` before it deregisters."""

    __slots__ = ()
    low, high, bounds = 0.0, 600.0, "0s..10m"


class DiscoveryIdle(Duration):
    """How long a discovery question nobody asks keeps its watcher and its cached answer."""

    __slots__ = ()
    low, high, bounds = INTERVAL_MIN, INTERVAL_MAX, "1s..1h"


DEFAULT_DISCOVERY_IDLE: Final = 300.0


@dataclass(frozen=True, slots=True)
class HttpCheck:
    """GET `url` (a path in the YAML is resolved against the service on 127.0.0.1)."""

    url: str


@dataclass(frozen=True, slots=True)
class TcpCheck:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ProcessCheck:
    """Exactly one of the three is set."""

    pidfile: str | None = None
    name: str | None = None
    cmdline: str | None = None


@dataclass(frozen=True, slots=True)
class ExecCheck:
    argv: tuple[str, ...]


Probe = HttpCheck | TcpCheck | ProcessCheck | ExecCheck


@dataclass(frozen=True, slots=True)
class CheckConfig:
    probe: Probe
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT  # of the default interval
    failures_before_critical: int = 1
    successes_before_passing: int = 1
    deregister_after: float = DEFAULT_DEREGISTER_AFTER


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The service as the master will list it. `openapi` is an absolute URL (a path in the
    YAML is resolved against the service on 127.0.0.1), or None."""

    name: str
    id: str
    address: str
    port: int
    scheme: str = "http"
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    openapi: str | None = None


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What an https:// master is verified against, and the client certificate shown to it:
    paths resolved against the service file, and a digest of their contents, so a reload
    that finds them rotated (SIGHUP) compares unequal and the context is built anew."""

    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    digest: str


@dataclass(frozen=True, slots=True)
class MasterLink:
    """Where to register: the master URLs tried in order (no trailing slash), the bearer
    token, and the TLS context for https:// masters (built once, at load, from `tls`; None:
    the system's defaults). (Not the master's own options: master.config.MasterConfig.)"""

    urls: tuple[str, ...] = (DEFAULT_MASTER_URL,)
    token: str | None = field(default=None, repr=False)  # never in a log or a traceback
    tls: TlsFiles | None = None
    ssl: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """The sidecar's own HTTP side; `advertise` is the HOST:PORT the master checks."""

    listen_host: str
    listen_port: int
    advertise: str
    resync: float = DEFAULT_RESYNC
    deregister_on_exit: bool = True
    # The tokens that may change the sidecar's state (POST /drain), a file in the one
    # token-file format (re-read when it changes); None: only loopback callers may.
    token_file: str | None = None
    # On SIGTERM or POST /drain: report `draining` this long, then deregister (0: at once).
    drain_grace: float = 0.0
    # A discovery question unasked this long has its watcher stopped and its answer dropped.
    discovery_idle: float = DEFAULT_DISCOVERY_IDLE

    @property
    def listen(self) -> str:
        return join_host_port(self.listen_host, self.listen_port)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    service: ServiceConfig
    check: CheckConfig
    master: MasterLink
    sidecar: SidecarSettings
    # What is valid but likely wrong (`file:line: field: ...`): `check` prints them, `run`
    # logs them. Not part of equality: a reload that only changes a warning changes nothing.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def registration(self, instance: str | None = None) -> Registration:
        """What the master should hold: it checks this sidecar's /health, which runs the
        probe, so the check URL is the advertised address and not the service's. The
        registration names its holder, `instance` (default: this host and the listen port;
        a running sidecar passes the one it fixed at start)."""
        service, check = self.service, self.check
        holder = instance or default_instance(self.sidecar.listen_port)
        return Registration(
            id=service.id,
            name=service.name,
            address=service.address,
            port=service.port,
            scheme="https" if service.scheme == "https" else "http",
            tags=service.tags,
            meta=dict(service.meta),
            check=CheckSpec(
                url=f"http://{self.sidecar.advertise}/health",
                interval=Interval(check.interval),
                timeout=Timeout(check.timeout),
                failures_before_critical=check.failures_before_critical,
                successes_before_passing=check.successes_before_passing,
                deregister_after=DeregisterAfter(check.deregister_after),
            ),
            instance=holder,
        )


def registration_json(
    config: Config, openapi: dict[str, Any] | None, instance: str | None = None
) -> dict[str, Any]:
    """The registration as plain JSON values (what `check` prints and /status shows); with
    `openapi`, the document too."""
    body: dict[str, Any] = to_builtins(config.registration(instance))
    if openapi is not None:
        body["openapi"] = openapi
    return body


def default_instance(port: int) -> str:
    """Who holds the id: `<hostname>:<sidecar port>`. The same for this sidecar restarted
    on this host, another for a copy on another host or port, which the master then refuses
    the id instead of letting it take the id over unnoticed."""
    host = "".join(c for c in socket.gethostname() if c.isprintable() and not c.isspace())
    return f"{host[: ADDRESS_MAX - 6] or 'localhost'}:{port}"


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand, validate and freeze a service file; ConfigError lists every problem.
    A file over FILE_MAX bytes is refused before it is parsed. It blocks (files are read,
    YAML is parsed in pure Python): a running sidecar calls it in a thread."""
    return parse_config(read_file(path), path, environ)


class FileUnreadable(ConfigError):
    """The file could not be read at all (missing, no permission, a directory): unlike a
    bad file, worth another try as it is."""


def read_file(path: str | Path, limit: int = FILE_MAX) -> bytes:
    """The bytes of a service file; FileUnreadable if it cannot be read, ConfigError if it
    holds more than `limit` bytes (no more than `limit` + 1 are ever read)."""
    file = str(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = b"" if size > limit else handle.read(limit + 1)
    except FileNotFoundError:
        raise FileUnreadable([Problem(file, None, "", "no such file")]) from None
    except IsADirectoryError:
        raise FileUnreadable([Problem(file, None, "", "is a directory, not a file")]) from None
    except OSError as exc:
        raise FileUnreadable([Problem(file, None, "", f"cannot read: {exc.strerror}")]) from None
    if size > limit or len(data) > limit:
        # A file that grew since its stat (or a device with no size): at least this many.
        shown = f"{size} bytes" if size > limit else f"more than {limit} bytes"
        message = f"larger than {FILE_MAX_TEXT if limit == FILE_MAX else limit} ({shown})"
        raise ConfigError([Problem(file, None, "", message)])
    return data


Parse = Callable[[str, str, Mapping[str, str]], Document]


def parse_config(
    data: bytes,
    path: str | Path,
    environ: Mapping[str, str] | None = None,
    parse: Parse | None = None,
) -> Config:
    """`load_config` of the bytes read from `path`; `parse` turns the text into a Document
    (the watcher hands a large file's to a child process)."""
    env = os.environ if environ is None else environ
    file = str(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"is not UTF-8 text (byte {exc.start})"
        raise ConfigError([Problem(file, None, "", message)]) from None
    doc = (parse or parse_document)(text, file, env)
    config = _Reader(doc, env, Path(path)).read()
    doc.raise_for_problems()
    _check_wire_format(doc, config)
    return replace(config, warnings=tuple(_warnings(doc, config)))


def _warnings(doc: Document, config: Config) -> list[str]:
    """What is valid but likely wrong, each at its line."""
    found: list[Problem] = []
    # A loopback advertise for a service that others reach elsewhere: a master on another
    # host would find nothing there, and mark the service critical.
    host = split_host(config.sidecar.advertise)
    if _is_loopback(host) and not _is_loopback(config.service.address):
        path = "sidecar.advertise" if doc.has("sidecar.advertise") else "sidecar.listen"
        found.append(
            Problem(
                doc.file,
                doc.line_of(path),
                path,
                f"the master will check this sidecar at {config.sidecar.advertise}, a "
                f"loopback address, while the service is at {config.service.address}: a "
                "master on another host cannot reach it; set sidecar.advertise to an "
                "address it can reach",
            )
        )
    # TLS settings that no URL uses: an http:// left where https:// was meant?
    master = config.master
    if master.tls is not None and not any(url.startswith("https://") for url in master.urls):
        path = next(f"master.{key}" for key in _TLS_KEYS if doc.has(f"master.{key}"))
        found.append(
            Problem(
                doc.file,
                doc.line_of(path),
                path,
                "no master.url is https://, so the TLS settings go unused",
            )
        )
    return [str(problem) for problem in found]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(host_port: str) -> str:
    host = host_port.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


def default_id(name: str) -> str:
    """`<name>-<hostname>`, the hostname made to fit the id pattern and length."""
    host = _ID_BAD_CHARS.sub("-", socket.gethostname()).strip("-._:@")
    host = host[: ID_MAX - len(name) - 1].rstrip("-._:@")
    return f"{name}-{host}" if host else name


def primary_address() -> str:
    """The source address of this host's default route; 127.0.0.1 with no network."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(_PROBE_ADDRESS)
        except OSError:
            return LOOPBACK
        address = str(sock.getsockname()[0])
    return LOOPBACK if address == "0.0.0.0" else address


class _Reader:
    """Reads the four sections off a Document. A bad field is recorded in the document
    and replaced by a placeholder so the remaining fields still get checked; the caller
    raises before any placeholder can escape."""

    def __init__(self, doc: Document, environ: Mapping[str, str], path: Path) -> None:
        self.doc = doc
        self.env = environ
        self.path = path

    def read(self) -> Config:
        self.doc.section("", _TOP_KEYS)
        service = self.service()
        sidecar = self.sidecar(service.address)
        return Config(
            path=self.path,
            service=service,
            check=self.check(service),
            master=self.master(),
            sidecar=sidecar,
        )

    # --- service ---------------------------------------------------------------------

    def service(self) -> ServiceConfig:
        doc = self.doc
        doc.section("service", _SERVICE_KEYS, required=True)
        name = doc.check("service.name", check_name, required=True) or "invalid"
        port = doc.check("service.port", check_int, 1, 65535, required=True) or 1
        scheme = doc.check("service.scheme", _check_scheme) or "http"
        openapi = doc.check("service.openapi", _check_url_or_path)
        return ServiceConfig(
            name=name,
            id=doc.check("service.id", check_id) or default_id(name),
            address=doc.check("service.address", _check_host) or self.default_address(),
            port=port,
            scheme=scheme,
            tags=doc.check("service.tags", check_tags) or (),
            meta=doc.check("service.meta", check_meta) or {},
            openapi=openapi and _resolve(openapi, scheme, port),
        )

    def default_address(self) -> str:
        pod_ip = self.env.get("POD_IP")
        if not pod_ip:
            return primary_address()
        try:
            return _check_host(pod_ip, "POD_IP")
        except FieldError as exc:
            self.doc.add(Problem(self.doc.file, None, "POD_IP", exc.message))
            return LOOPBACK

    # --- check -----------------------------------------------------------------------

    def check(self, service: ServiceConfig) -> CheckConfig:
        doc = self.doc
        if not doc.section("check", _CHECK_KEYS):
            return CheckConfig(probe=TcpCheck(LOOPBACK, service.port))
        interval: float = doc.check("check.interval", Interval.parse) or DEFAULT_INTERVAL
        timeout = doc.check("check.timeout", _check_timeout, interval)
        after = doc.check("check.deregister_after", DeregisterAfter.parse)
        failures = doc.check("check.failures_before_critical", check_int, 1, THRESHOLD_MAX)
        successes = doc.check("check.successes_before_passing", check_int, 1, THRESHOLD_MAX)
        return CheckConfig(
            probe=self.probe(service),  # last: a problem with the kind marks all of check
            interval=interval,
            timeout=CheckSpec.timeout_for(interval, None) if timeout is None else timeout,
            failures_before_critical=failures or 1,
            successes_before_passing=successes or 1,
            deregister_after=DEFAULT_DEREGISTER_AFTER if after is None else after,
        )

    def probe(self, service: ServiceConfig) -> Probe:
        doc = self.doc
        kinds = [kind for kind in _PROBE_KINDS if doc.has(f"check.{kind}")]
        placeholder = TcpCheck(LOOPBACK, service.port)
        if not kinds:
            doc.problem(
                "check",
                "needs one of http, tcp, process or exec (or leave check: out for a tcp "
                "connect to service.port)",
            )
            return placeholder
        if len(kinds) > 1:
            later = f"check.{kinds[1]}"
            doc.problem(
                "check",
                f"has both {kinds[0]} and {kinds[1]}; a check has exactly one of "
                "http, tcp, process or exec",
                line=doc.line_of(later),
            )
            return placeholder
        kind = kinds[0]
        path = f"check.{kind}"
        if kind == "http":
            url = doc.check(path, _check_url_or_path, required=True)
            return HttpCheck(_resolve(url, service.scheme, service.port)) if url else placeholder
        if kind == "tcp":
            target = doc.check(path, _check_tcp_target, required=True)
            return TcpCheck(*target) if isinstance(target, tuple) else placeholder
        if kind == "exec":
            argv = doc.check(path, _check_argv, required=True)
            return ExecCheck(argv) if argv else placeholder
        return self.process() or placeholder

    def process(self) -> ProcessCheck | None:
        doc = self.doc
        if not doc.section("check.process", _PROCESS_KEYS, required=True):
            return None
        given = [key for key in _PROCESS_KEYS if doc.has(f"check.process.{key}")]
        if len(given) != 1:
            doc.problem(
                "check.process",
                "needs exactly one of pidfile, name or cmdline, got "
                + (" and ".join(given) if given else "none"),
                line=doc.line_of(f"check.process.{given[1]}") if len(given) > 1 else None,
            )
            return None
        key = given[0]
        value = doc.check(f"check.process.{key}", check_text, ARG_MAX, required=True)
        if value is None:
            return None
        if key == "pidfile":  # relative to the service file, like every path in it
            value = str(self.path.parent / value)
        return ProcessCheck(**{key: value})

    # --- master ----------------------------------------------------------------------

    def master(self) -> MasterLink:
        doc = self.doc
        doc.section("master", _MASTER_KEYS)
        urls = doc.check("master.url", _check_urls)
        if urls is None:
            urls = self.env_master_urls()
        tls, context = self.tls()
        if doc.has("master.token") and doc.has("master.token_file"):
            doc.problem("master.token_file", "give token or token_file, not both")
            return MasterLink(urls, None, tls, context)
        token = doc.check("master.token", _check_token)
        file = doc.check("master.token_file", check_text, PATH_MAX)
        if file is not None:
            tokens = self.read_tokens("master.token_file", file)
            token = tokens[0] if tokens else None
        return MasterLink(urls, token, tls, context)

    def tls(self) -> tuple[TlsFiles | None, ssl.SSLContext | None]:
        """The TLS files for https:// masters and the context built from them, once, here:
        a problem with a file is reported at its line like any other."""
        doc = self.doc
        paths = {key: doc.check(f"master.{key}", check_text, PATH_MAX) for key in _TLS_KEYS}
        given = {key: str(self.path.parent / path) for key, path in paths.items() if path}
        if not given or any(doc.is_broken(f"master.{key}") for key in _TLS_KEYS):
            return None, None
        if "key_file" in given and "cert_file" not in given:
            doc.problem("master.key_file", "needs master.cert_file (the certificate it belongs to)")
            return None, None
        digest = hashlib.sha256()
        for key in _TLS_KEYS:
            if key in given:
                content = self.read_tls_file(key, given[key])
                if content is None:
                    return None, None
                digest.update(key.encode() + b"\0" + hashlib.sha256(content).digest())
        files = TlsFiles(
            given.get("ca_file"), given.get("cert_file"), given.get("key_file"), digest.hexdigest()
        )
        try:
            context = ssl.create_default_context(cafile=files.ca_file)
        except (ssl.SSLError, ValueError) as exc:
            doc.problem("master.ca_file", f"{files.ca_file!r} holds no CA certificate: {exc}")
            return None, None
        if files.cert_file is not None:
            try:
                context.load_cert_chain(files.cert_file, files.key_file)
            except ssl.SSLError as exc:
                blamed = "master.key_file" if files.key_file else "master.cert_file"
                doc.problem(blamed, f"not a certificate and its private key: {_ssl_reason(exc)}")
                return None, None
        return files, context

    def read_tls_file(self, key: str, path: str) -> bytes | None:
        try:
            with open(path, "rb") as handle:
                content = handle.read(TLS_FILE_MAX + 1)
        except OSError as exc:
            self.doc.problem(f"master.{key}", f"cannot read {path!r}: {exc.strerror}")
            return None
        if len(content) > TLS_FILE_MAX:
            self.doc.problem(f"master.{key}", f"{path!r} is larger than 1 MiB")
            return None
        if b"-----BEGIN " not in content:
            self.doc.problem(f"master.{key}", f"{path!r} is not PEM (no -----BEGIN line)")
            return None
        return content

    def env_master_urls(self) -> tuple[str, ...]:
        """PICOAPI_MASTER_URL, several separated by commas, since a variable is no list."""
        text = self.env.get("PICOAPI_MASTER_URL", "").strip()
        if not text:
            return (DEFAULT_MASTER_URL,)
        try:
            parts = [part.strip() for part in text.split(",")]
            return _check_urls(parts if len(parts) > 1 else parts[0], "PICOAPI_MASTER_URL")
        except FieldError as exc:
            self.doc.add(Problem(self.doc.file, None, exc.field, exc.message))
            return (DEFAULT_MASTER_URL,)

    def read_tokens(self, field: str, file: str) -> tuple[str, ...] | None:
        """The tokens of the file, in the one token-file format (master.shared.tokens),
        relative to the service file; None (and a problem at `field`) if it has none."""
        path = self.path.parent / file
        try:
            tokens = read_tokens(path)
        except TokenFileError as exc:
            shown = repr(str(path))
            if exc.empty:
                message = f"{shown} is empty"
            elif exc.strerror is not None:
                message = f"cannot read {shown}: {exc.strerror}"
            else:
                message = f"{shown} is not UTF-8 text"
            self.doc.problem(field, message)
            return None
        if any(c.isspace() for token in tokens for c in token):
            self.doc.problem(field, f"{str(path)!r}: a token holds a space")
            return None
        return tokens

    # --- sidecar ---------------------------------------------------------------------

    def sidecar(self, address: str) -> SidecarSettings:
        doc = self.doc
        doc.section("sidecar", _SIDECAR_KEYS)
        host, port = doc.check("sidecar.listen", _check_listen) or DEFAULT_LISTEN
        advertise = doc.check("sidecar.advertise", _check_advertise, port)
        resync = doc.check("sidecar.resync", Resync.parse)
        on_exit = doc.check("sidecar.deregister_on_exit", check_bool)
        token_file = doc.check("sidecar.token_file", check_text, PATH_MAX)
        drain_grace = doc.check("sidecar.drain_grace", DrainGrace.parse)
        discovery_idle = doc.check("sidecar.discovery_idle", DiscoveryIdle.parse)
        if token_file is not None:
            # Read now so a problem is reported at its line; the server re-reads it as it
            # changes (rotation), keeping the last good tokens.
            token_file = str(self.path.parent / token_file)
            self.read_tokens("sidecar.token_file", token_file)
        if advertise is None:
            # Bound to one address, the sidecar is reachable only there; bound to all, at
            # the service's address.
            advertise = join_host_port(address if host in _WILDCARDS else host, port)
        return SidecarSettings(
            listen_host=host,
            listen_port=port,
            advertise=advertise,
            resync=resync or DEFAULT_RESYNC,
            deregister_on_exit=True if on_exit is None else on_exit,
            token_file=token_file,
            drain_grace=float(drain_grace or 0.0),
            discovery_idle=float(discovery_idle or DEFAULT_DISCOVERY_IDLE),
        )


def _ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason (`KEY_VALUES_MISMATCH`), not its library prefix and line."""
    return str(exc.reason or exc.strerror or exc).lower().replace("_", " ")


# --- field checks: master.model's shape, (value, field, ...) -> value or FieldError ------


def _check_timeout(value: object, field: str, interval: float) -> float:
    return CheckSpec.timeout_for(interval, Timeout.parse(value, field), field)


def _check_scheme(value: object, field: str) -> str:
    if value not in ("http", "https"):
        raise FieldError(field, f"must be http or https, got {value!r}")
    return str(value)


def _check_listen(value: object, field: str) -> tuple[str, int]:
    """Port 0 asks the kernel for a free port (tests run real sidecars that way)."""
    return check_host_port(value, field, allow_zero=True)


def _check_token(value: object, field: str) -> str:
    token = check_text(value, field, 4096)
    if any(c.isspace() for c in token):
        raise FieldError(field, "must not contain spaces")
    return token


def _check_host(value: object, field: str) -> str:
    """A host name or IP address, as the master will show it to clients."""
    host = check_text(value, field, ADDRESS_MAX)
    if "/" in host or any(c.isspace() for c in host):
        raise FieldError(field, f"must be a host name or IP address, got {host!r}")
    return host


def _check_url_or_path(value: object, field: str) -> str:
    text = check_text(value, field, 2048)
    if text.startswith("/"):
        return text
    if "://" not in text:
        raise FieldError(
            field, f"must be a path starting with / or an http(s):// URL, got {text!r}"
        )
    return check_url(text, field)


def _resolve(url_or_path: str, scheme: str, port: int) -> str:
    """A path means the service itself, reached over loopback as the sidecar sits beside it."""
    if url_or_path.startswith("/"):
        return f"{scheme}://{LOOPBACK}:{port}{url_or_path}"
    return url_or_path


def _check_tcp_target(value: object, field: str) -> tuple[str, int] | bool:
    if value is True:
        return True
    if not isinstance(value, str):
        raise FieldError(field, f"must be true or HOST:PORT, got {type_name(value)}")
    return check_host_port(value, field)


def _check_argv(value: object, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise FieldError(
            field,
            "must be a list of arguments like [/usr/bin/pg_isready, -q], not a string: "
            "no shell runs it",
        )
    if not isinstance(value, list):
        raise FieldError(field, f"must be a list of arguments, got {type_name(value)}")
    if not value:
        raise FieldError(field, "must name a program to run")
    return tuple(check_text(arg, f"{field}[{i}]", ARG_MAX) for i, arg in enumerate(value))


def _check_urls(value: object, field: str) -> tuple[str, ...]:
    """One URL or a list of them, tried in order; kept without a trailing slash."""
    if not isinstance(value, list):
        return (check_url(value, field).rstrip("/"),)
    if not value:
        raise FieldError(field, "must name at least one URL")
    return tuple(check_url(item, f"{field}[{i}]").rstrip("/") for i, item in enumerate(value))


def _check_advertise(value: object, field: str, listen_port: int) -> str:
    """HOST:PORT, or just HOST to reuse the listen port."""
    text = check_text(value, field, ADDRESS_MAX + 8)
    if ":" not in text:
        return join_host_port(_check_host(text, field), listen_port)
    return join_host_port(*check_host_port(text, field))


# --- the guarantee --------------------------------------------------------------------


def _check_wire_format(doc: Document, config: Config) -> None:
    """Run the master's own parser over what we would send. Each field has been checked
    already, so this only fires if the two ever drift; it then still names a YAML line."""
    try:
        parse_registration(registration_body(config.registration(), KEEP))
    except FieldError as exc:
        if exc.field.startswith("check.url"):
            path = "sidecar.advertise"
        elif exc.field.startswith("check"):
            path = exc.field
        else:
            path = f"service.{exc.field}"
        raise ConfigError([Problem(doc.file, doc.line_of(path), path, exc.message)]) from None
