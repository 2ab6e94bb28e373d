"""The wire format: registrations, records, check results and durations.

Defined once, here. The master validates what it receives with these functions, and the
sidecar imports this module (and nothing else of the master) to build what it sends, so
the two sides cannot drift apart.
"""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

# Limits on what one registration may hold. The API answers 400 naming the field past these.
ID_MAX: Final = 128
NAME_MAX: Final = 63
ADDRESS_MAX: Final = 255
TAG_MAX: Final = 128
TAGS_MAX: Final = 64
META_KEYS_MAX: Final = 64
META_KEY_MAX: Final = 128
META_VALUE_MAX: Final = 512
URL_MAX: Final = 2048
THRESHOLD_MAX: Final = 100
INTERVAL_MIN: Final = 1.0
INTERVAL_MAX: Final = 3600.0
DEREGISTER_AFTER_MAX: Final = 7 * 24 * 3600.0
DEFAULT_INTERVAL: Final = 10.0
DEFAULT_TIMEOUT: Final = 2.0
OUTPUT_MAX: Final = 4096

NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_UNWANTED_RE: Final = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # control, surrogate
_DURATION_PART_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class FieldError(ValueError):
    """A value that breaks the wire format; `field` is its dotted path (`tags[3]`)."""

    def __init__(self, field: str, message: str, code: str = "invalid_field") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.code = code


class Status(StrEnum):
    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"


# --- durations -------------------------------------------------------------------------


def parse_duration(value: object, field: str) -> float:
    """`500ms`, `10s`, `2m`, `1h`, `1m30s` (or a number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise FieldError(field, f"must be a duration like 10s, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise FieldError(field, f"must be a duration like 10s, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise FieldError(field, f"must be a duration like 10s, got {type(value).__name__}")
    text = value.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise FieldError(field, f"must be a duration like 500ms, 10s, 2m or 1h, got {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """The canonical text of a duration, so equal durations compare equal on the wire."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


# --- JSON ------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise FieldError("", f"{name} is not valid JSON", code="invalid_json")


def loads_json(body: bytes) -> Any:
    """Parse a request body; every failure is a FieldError, never a crash.

    Rejects what Python's json accepts but JSON does not (NaN, Infinity) and survives
    hostile input (nesting deep enough to exhaust the recursion limit, huge integers).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FieldError("", f"body is not UTF-8: {exc.reason}", code="invalid_json") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise FieldError(
            "",
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise FieldError("", "JSON nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python will convert
        if isinstance(exc, FieldError):
            raise
        raise FieldError("", f"invalid JSON: {exc}", code="invalid_json") from None


def dumps_compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def openapi_digest(document: Mapping[str, Any]) -> str:
    """The sha256 both sides compute over a document, independent of key order."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- field checks ----------------------------------------------------------------------


def check_text(value: object, field: str, max_len: int, *, min_len: int = 1) -> str:
    """A string within length bounds, with no control characters or lone surrogates."""
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {_type_name(value)}")
    if len(value) < min_len:
        raise FieldError(field, "must not be empty")
    if len(value) > max_len:
        raise FieldError(field, f"must be at most {max_len} characters, got {len(value)}")
    unwanted = _UNWANTED_RE.search(value)  # one scan on the hot path; the message after
    if unwanted and "\ud800" <= unwanted.group() <= "\udfff":
        raise FieldError(field, "must not contain lone surrogate code points")
    if unwanted:
        raise FieldError(field, "must not contain control characters")
    return value


def check_int(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, f"must be an integer {low}..{high}, got {_type_name(value)}")
    if not low <= value <= high:
        shown = value if abs(value) < 10**12 else "a number that large"
        raise FieldError(field, f"must be {low}..{high}, got {shown}")
    return value


def check_name(value: object, field: str = "name") -> str:
    name = check_text(value, field, NAME_MAX)
    if not NAME_RE.fullmatch(name):
        raise FieldError(
            field,
            "must be lowercase letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit, got {name!r}",
        )
    return name


def check_id(value: object, field: str = "id") -> str:
    ident = check_text(value, field, ID_MAX)
    if not ID_RE.fullmatch(ident):
        raise FieldError(
            field,
            "must be letters, digits, '.', '_', ':', '@' or '-', starting with a letter or "
            f"digit, got {ident!r}",
        )
    return ident


def check_tags(value: object, field: str = "tags") -> tuple[str, ...]:
    """Tags in order, duplicates dropped (a tag is a set member; order is kept for display)."""
    if not isinstance(value, list | tuple):
        raise FieldError(field, f"must be a list of strings, got {_type_name(value)}")
    if len(value) > TAGS_MAX:
        raise FieldError(field, f"must hold at most {TAGS_MAX} tags, got {len(value)}")
    tags = [check_text(tag, f"{field}[{i}]", TAG_MAX) for i, tag in enumerate(value)]
    return tuple(dict.fromkeys(tags))


def check_meta(value: object, field: str = "meta") -> dict[str, str]:
    if not isinstance(value, dict):
        raise FieldError(field, f"must be an object of strings, got {_type_name(value)}")
    if len(value) > META_KEYS_MAX:
        raise FieldError(field, f"must hold at most {META_KEYS_MAX} keys, got {len(value)}")
    meta: dict[str, str] = {}
    for key, item in value.items():
        check_text(key, f"{field} key", META_KEY_MAX)
        meta[key] = check_text(item, f"{field}.{key}", META_VALUE_MAX, min_len=0)
    return meta


def check_url(value: object, field: str) -> str:
    url = check_text(value, field, URL_MAX)
    if not (url.startswith("http://") or url.startswith("https://")) or len(url) < 9:
        raise FieldError(field, f"must be an http:// or https:// URL, got {url!r}")
    if " " in url:
        raise FieldError(field, "must not contain spaces")
    return url


def _type_name(value: object) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _reject_unknown(body: Mapping[str, Any], known: frozenset[str], prefix: str) -> None:
    for key in body:
        if key not in known:
            where = f"{prefix}{key}" if isinstance(key, str) else prefix.rstrip(".")
            raise FieldError(where, "unknown field", code="unknown_field")


# --- the registration ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """How the master checks a service: GET `url` every `interval`."""

    url: str
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    failures_before_critical: int = 1
    successes_before_passing: int = 1
    deregister_after: float = 0.0  # seconds critical before removal; 0 = never

    _FIELDS = frozenset(
        {
            "url",
            "interval",
            "timeout",
            "failures_before_critical",
            "successes_before_passing",
            "deregister_after",
        }
    )

    @classmethod
    def from_json(cls, body: object, field: str = "check") -> CheckSpec:
        if not isinstance(body, dict):
            raise FieldError(field, f"must be an object or null, got {_type_name(body)}")
        _reject_unknown(body, cls._FIELDS, f"{field}.")
        if "url" not in body:
            raise FieldError(f"{field}.url", "is required", code="missing_field")
        url = check_url(body["url"], f"{field}.url")
        interval = parse_duration(body.get("interval", DEFAULT_INTERVAL), f"{field}.interval")
        if not INTERVAL_MIN <= interval <= INTERVAL_MAX:
            raise FieldError(
                f"{field}.interval", f"must be 1s..1h, got {format_duration(interval)}"
            )
        default_timeout = min(DEFAULT_TIMEOUT, interval / 2)
        timeout = parse_duration(body.get("timeout", default_timeout), f"{field}.timeout")
        if not 0 < timeout < interval:
            raise FieldError(
                f"{field}.timeout",
                f"must be above 0 and below interval ({format_duration(interval)}), "
                f"got {format_duration(timeout)}",
            )
        deregister_after = parse_duration(
            body.get("deregister_after", 0), f"{field}.deregister_after"
        )
        if deregister_after > DEREGISTER_AFTER_MAX:
            raise FieldError(f"{field}.deregister_after", "must be at most 168h")
        return cls(
            url=url,
            interval=interval,
            timeout=timeout,
            failures_before_critical=check_int(
                body.get("failures_before_critical", 1),
                f"{field}.failures_before_critical",
                1,
                THRESHOLD_MAX,
            ),
            successes_before_passing=check_int(
                body.get("successes_before_passing", 1),
                f"{field}.successes_before_passing",
                1,
                THRESHOLD_MAX,
            ),
            deregister_after=deregister_after,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "interval": format_duration(self.interval),
            "timeout": format_duration(self.timeout),
            "failures_before_critical": self.failures_before_critical,
            "successes_before_passing": self.successes_before_passing,
            "deregister_after": format_duration(self.deregister_after),
        }


@dataclass(frozen=True, slots=True)
class Registration:
    """What a service (or its sidecar) says about itself. Compared whole to detect change."""

    id: str
    name: str
    address: str
    port: int
    scheme: str = "http"
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = dataclasses.field(default_factory=dict)
    check: CheckSpec | None = None

    _FIELDS = frozenset(
        {"id", "name", "address", "port", "scheme", "tags", "meta", "check", "openapi"}
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "scheme": self.scheme,
            "tags": list(self.tags),
            "meta": dict(self.meta),
            "check": self.check.to_json() if self.check else None,
        }


class _Keep:
    """The `openapi` key was absent: keep whatever document is stored."""

    _instance: _Keep | None = None

    def __new__(cls) -> _Keep:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = _Keep()
OpenAPIChange = dict[str, Any] | None | _Keep


def check_openapi(value: object, field: str = "openapi") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(field, f"must be an object, got {_type_name(value)}")
    if "openapi" not in value and "swagger" not in value:
        raise FieldError(field, "must be an OpenAPI document (an 'openapi' or 'swagger' key)")
    return value


def parse_registration(
    body: object, path_id: str | None = None
) -> tuple[Registration, OpenAPIChange]:
    """Validate a registration body. `path_id` (from the URL) must agree with `id` if both."""
    if not isinstance(body, dict):
        raise FieldError("", f"body must be a JSON object, got {_type_name(body)}")
    _reject_unknown(body, Registration._FIELDS, "")
    if "id" in body:
        ident = check_id(body["id"])
        if path_id is not None and ident != path_id:
            raise FieldError("id", f"{ident!r} disagrees with the path's id {path_id!r}")
    elif path_id is not None:
        ident = check_id(path_id)
    else:
        raise FieldError("id", "is required", code="missing_field")
    for required in ("name", "address", "port"):
        if required not in body:
            raise FieldError(required, "is required", code="missing_field")
    scheme = body.get("scheme", "http")
    if scheme not in ("http", "https"):
        raise FieldError("scheme", f"must be http or https, got {scheme!r}")
    check_body = body.get("check")
    registration = Registration(
        id=ident,
        name=check_name(body["name"]),
        address=check_text(body["address"], "address", ADDRESS_MAX),
        port=check_int(body["port"], "port", 1, 65535),
        scheme=scheme,
        tags=check_tags(body.get("tags") or []),
        meta=check_meta(body.get("meta") or {}),
        check=None if check_body is None else CheckSpec.from_json(check_body),
    )
    openapi: OpenAPIChange = KEEP
    if "openapi" in body:
        openapi = None if body["openapi"] is None else check_openapi(body["openapi"])
    return registration, openapi


# --- what the master keeps -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One probe's outcome. A failed probe is data, not an exception."""

    status: Status
    output: str
    duration_ms: float
    at: float = dataclasses.field(default_factory=time.time)
    http_status: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": format_time(self.at),
            "status": self.status.value,
            "http_status": self.http_status,
            "output": self.output,
            "duration_ms": round(self.duration_ms, 3),
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> CheckResult:
        return cls(
            status=Status(body["status"]),
            output=body.get("output", ""),
            duration_ms=float(body.get("duration_ms", 0.0)),
            at=parse_time(body["at"]),
            http_status=body.get("http_status"),
        )


@dataclass(frozen=True, slots=True)
class Record:
    """A registration as the master holds it, with its health and history."""

    registration: Registration
    status: Status
    registered_at: float
    updated_at: float
    openapi: dict[str, Any] | None = None
    openapi_sha256: str | None = None
    last_check: CheckResult | None = None

    @property
    def id(self) -> str:
        return self.registration.id

    def to_json(self, *, with_openapi: bool = False) -> dict[str, Any]:
        body = self.registration.to_json()
        body["status"] = self.status.value
        body["registered_at"] = format_time(self.registered_at)
        body["updated_at"] = format_time(self.updated_at)
        body["openapi_sha256"] = self.openapi_sha256
        body["last_check"] = self.last_check.to_json() if self.last_check else None
        if with_openapi:
            body["openapi"] = self.openapi
        return body

    @classmethod
    def from_store(cls, body: Mapping[str, Any]) -> Record:
        registration, openapi = parse_registration(dict(body_without_record_fields(body)))
        document = openapi if isinstance(openapi, dict) else None
        last = body.get("last_check")
        return cls(
            registration=registration,
            status=Status(body["status"]),
            registered_at=parse_time(body["registered_at"]),
            updated_at=parse_time(body["updated_at"]),
            openapi=document,
            openapi_sha256=openapi_digest(document) if document is not None else None,
            last_check=CheckResult.from_json(last) if last else None,
        )


_RECORD_ONLY = frozenset({"status", "registered_at", "updated_at", "openapi_sha256", "last_check"})


def body_without_record_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _RECORD_ONLY}


def format_time(epoch: float) -> str:
    """UTC, RFC 3339 with milliseconds: `2026-11-28T13:35:38.123Z`."""
    whole = int(epoch)
    ms = round((epoch - whole) * 1000)
    if ms == 1000:
        whole, ms = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def parse_time(text: str) -> float:
    main, _, frac = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    return seconds + (int(frac) / 10 ** len(frac) if frac else 0.0)
