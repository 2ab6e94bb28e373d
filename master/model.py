"""The wire format, declared once: registrations, check specs, records and check results.

Every field's type, bounds and default live here, as msgspec types. The master decodes and
validates a request body with them in one pass; the sidecar validates its YAML file with
the same types, field by field; `/openapi.json` publishes their JSON Schema. One encoder
writes them (and the canonical OpenAPI documents both sides hash), so the two daemons
cannot drift apart. `master.errors` never appears here: a broken value is a `FieldError`
whose `field` is its dotted path (`tags[3]`, `check.interval`), with a message a person
can act on, made from the declared type by `_explain` (msgspec's own texts are terse).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import math
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, Self, TypeVar

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

# --- limits: the API answers 400 naming the field past these ---------------------------

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
DEFAULT_DEREGISTER_AFTER: Final = 600.0  # 10m: the one default, for the API and the YAML
OUTPUT_MAX: Final = 4096

T = TypeVar("T")


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
    DRAINING = "draining"  # going away on purpose: excluded from what is passing


# --- text that cannot hide anything ----------------------------------------------------

NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]*$"
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
TEXT_RULE: Final = (
    "printable characters only: no control characters, and no invisible or "
    "direction-changing ones (Unicode Cf: bidi overrides, zero widths; line separators)"
)


def _text(max_length: int, *, min_length: int = 1, rule: str = "text", **meta: Any) -> Any:
    description = meta.pop("description", TEXT_RULE)
    return Meta(
        min_length=min_length,
        max_length=max_length,
        extra={"rule": rule},
        description=description,
        **meta,
    )


def check_printable(value: str, field: str) -> str:
    """Every string of the wire format is printable (str.isprintable: no Cc, Cf, Cs, Zl,
    Zp, ...), so `prod` and `prod\u200b` cannot pass as twins, nor an address hide behind
    a bidi override. One C call per string: a regex per field costs ten times as much."""
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise FieldError(field, _unwanted_character(bad))
    return value


Name = Annotated[
    str,
    _text(
        NAME_MAX,
        rule="name",
        pattern=NAME_PATTERN,
        description="lowercase letters, digits, '.', '_' or '-'; several instances share it",
    ),
]
Id = Annotated[
    str,
    _text(
        ID_MAX,
        rule="id",
        pattern=ID_PATTERN,
        description="unique per instance: letters, digits, '.', '_', ':', '@' or '-'",
    ),
]
Address = Annotated[str, _text(ADDRESS_MAX, description="where clients reach the service")]
Tag = Annotated[str, _text(TAG_MAX)]
Tags = Annotated[tuple[Tag, ...], Meta(max_length=TAGS_MAX, extra={"noun": "tags"})]
MetaKey = Annotated[str, _text(META_KEY_MAX)]
MetaValue = Annotated[str, _text(META_VALUE_MAX, min_length=0)]
MetaMap = Annotated[dict[MetaKey, MetaValue], Meta(max_length=META_KEYS_MAX)]
Instance = Annotated[
    str,
    _text(
        ADDRESS_MAX,
        description="who holds the id (a sidecar sends <hostname>:<its port>); a PUT from "
        "another holder is refused with 409 id_conflict while the record is not critical",
    ),
]
Url = Annotated[
    str, _text(URL_MAX, min_length=9, rule="url", description="an http:// or https:// URL")
]
Port = Annotated[int, Meta(ge=1, le=65535)]
Threshold = Annotated[int, Meta(ge=1, le=THRESHOLD_MAX)]
Scheme = Literal["http", "https"]


# --- durations and times ---------------------------------------------------------------

_DURATION_PART_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_PATTERN: Final = r"^(\d+(\.\d+)?(ms|s|m|h))+$|^0$"


def parse_duration(value: object, field: str = "") -> float:
    """`500ms`, `10s`, `2m`, `1h`, `1m30s` (or a number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise FieldError(field, f"must be a duration like 10s, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise FieldError(field, f"must be a duration like 10s, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise FieldError(field, f"must be a duration like 10s, got {json_type_name(value)}")
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


class Duration(float):
    """Seconds, written `500ms`, `10s`, `2m`, `1h` on the wire. A subclass names its bounds;
    the decoders turn the text into one, so a bad value fails where it stands."""

    __slots__ = ()
    low: ClassVar[float] = 0.0
    high: ClassVar[float] = math.inf
    bounds: ClassVar[str] = ""  # the JSON Schema's description and the error's wording

    @classmethod
    def parse(cls, value: object, field: str = "") -> Self:
        seconds = parse_duration(value, field)
        if not cls.low <= seconds <= cls.high:
            raise FieldError(field, f"must be {cls.bounds}, got {format_duration(seconds)}")
        return cls(seconds)


class Interval(Duration):
    __slots__ = ()
    low, high, bounds = INTERVAL_MIN, INTERVAL_MAX, "1s..1h"


class Timeout(Duration):
    __slots__ = ()
    bounds = "above 0 and below interval"


class DeregisterAfter(Duration):
    __slots__ = ()
    high, bounds = DEREGISTER_AFTER_MAX, "at most 168h (0 = never)"


class Time(float):
    """Seconds since the epoch, written as UTC RFC 3339 with milliseconds."""

    __slots__ = ()

    @classmethod
    def now(cls) -> Time:
        """The current time at the precision the wire keeps, so a record read back from
        the store equals the one written."""
        return cls(round(time.time(), 3))


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


_DURATIONS: dict[tuple[type, object], Duration] = {}  # "10s" repeats: parse it once
_DURATIONS_MAX: Final = 4096


def _dec_hook(kind: type, value: Any) -> Any:
    if issubclass(kind, Duration):
        key = (kind, value)
        duration = _DURATIONS.get(key) if isinstance(value, str) else None
        if duration is not None:
            return duration
        try:
            duration = kind.parse(value)
        except FieldError as exc:
            raise ValueError(exc.message) from None
        if isinstance(value, str) and len(_DURATIONS) < _DURATIONS_MAX:
            _DURATIONS[key] = duration
        return duration
    if kind is Time:
        if not isinstance(value, str):
            raise ValueError(f"must be an RFC 3339 time, got {json_type_name(value)}")
        return Time(parse_time(value))
    raise NotImplementedError(kind)


_SECOND: list[Any] = [None, ""]  # the last whole second formatted, and its text
_DURATION_TEXTS: dict[float, str] = {}


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Time):  # most often many in the same second: format it once
        whole = int(value)
        ms = round((value - whole) * 1000)
        if ms == 1000:
            whole, ms = whole + 1, 0
        if _SECOND[0] != whole:
            _SECOND[:] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        return f"{_SECOND[1]}.{ms:03d}Z"
    if isinstance(value, Duration):
        text = _DURATION_TEXTS.get(value)
        if text is None:
            text = format_duration(value)
            if len(_DURATION_TEXTS) < _DURATIONS_MAX:
                _DURATION_TEXTS[float(value)] = text
        return text
    raise NotImplementedError(type(value))


def _schema_hook(kind: type) -> dict[str, Any]:
    if issubclass(kind, Duration):
        return {"type": "string", "pattern": DURATION_PATTERN, "description": kind.bounds}
    if kind is Time:
        return {"type": "string", "format": "date-time"}
    raise NotImplementedError(kind)


# --- the registration ------------------------------------------------------------------


# Frozen, unknown keys refused, and out of the cycle collector (a struct of strings and
# numbers holds no cycle): cheaper to build, and 10,000 records cost the GC nothing.
def _default(kind: type[float], value: float) -> Any:
    """A default for a Duration or Time field. A factory, not a value: msgspec writes plain
    defaults into the JSON Schema without the hooks that know these types."""
    return msgspec.field(default_factory=lambda: kind(value))


def _shown(kind: Any, default: str) -> Any:
    """`kind` with the JSON Schema default its factory cannot show."""
    return Annotated[kind, Meta(extra_json_schema={"default": default})]


class CheckSpec(Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """How the master checks a service: GET `url` every `interval`."""

    url: Url
    interval: _shown(Interval, "10s") = _default(Interval, DEFAULT_INTERVAL)  # type: ignore[valid-type]
    timeout: Timeout | None = None  # None: 2s, or half the interval if that is shorter
    failures_before_critical: Threshold = 1
    successes_before_passing: Threshold = 1
    # critical this long, the service is removed; 0 = never
    deregister_after: _shown(DeregisterAfter, "10m") = _default(  # type: ignore[valid-type]
        DeregisterAfter, DEFAULT_DEREGISTER_AFTER
    )

    def __post_init__(self) -> None:
        url = self.url
        if not url.startswith(("http://", "https://")) or " " in url or not url.isprintable():
            raise _Invalid("url", _explain_url(url))
        try:
            timeout = self.timeout_for(self.interval, self.timeout)
        except FieldError as exc:
            raise _Invalid("timeout", exc.message) from None
        if timeout is not self.timeout:
            msgspec.structs.force_setattr(self, "timeout", timeout)

    @staticmethod
    def timeout_for(interval: float, timeout: float | None, field: str = "timeout") -> Timeout:
        """The timeout in force: as given if above 0 and below the interval; if not given,
        2s, or half the interval if that is shorter."""
        if timeout is None:
            return Timeout(min(DEFAULT_TIMEOUT, interval / 2))
        if not 0 < timeout < interval:
            raise FieldError(
                field,
                f"must be above 0 and below interval ({format_duration(interval)}), "
                f"got {format_duration(timeout)}",
            )
        return timeout if isinstance(timeout, Timeout) else Timeout(timeout)

    @property
    def timeout_s(self) -> float:
        """The timeout in force (never None once built)."""
        return float(self.timeout or 0.0)


class Registration(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, gc=False):
    """What a service (or its sidecar) says about itself. Compared whole to detect change."""

    id: Id
    name: Name
    address: Address
    port: Port
    scheme: Scheme = "http"
    tags: Tags = ()
    meta: MetaMap = {}
    check: CheckSpec | None = None
    instance: Instance | None = None  # absent: the stored holder stays
    draining: bool = False  # the sidecar is taking it out: `draining` until deregistered

    def __post_init__(self) -> None:
        check_texts(self)
        # Interned: ten thousand services share a few dozen tags, meta keys and values,
        # names and hosts, so each is held once (half of what a record costs otherwise).
        # A tag is a set member: duplicates go, the order stays.
        setattr_ = msgspec.structs.force_setattr
        setattr_(self, "tags", tuple(dict.fromkeys(map(sys.intern, self.tags))))
        setattr_(self, "meta", {sys.intern(k): sys.intern(v) for k, v in self.meta.items()})
        setattr_(self, "name", sys.intern(self.name))
        setattr_(self, "address", sys.intern(self.address))


REGISTRATION_FIELDS: Final = Registration.__struct_fields__


def check_texts(registration: Registration) -> None:
    """The printable rule over the free-text fields, in one pass on the happy path."""
    meta = registration.meta
    instance = registration.instance or ""
    joined = "".join((registration.address, instance, *registration.tags, *meta, *meta.values()))
    if joined.isprintable():
        return
    try:
        check_printable(registration.address, "address")
        check_printable(instance, "instance")
        for i, tag in enumerate(registration.tags):
            check_printable(tag, f"tags[{i}]")
        for key, item in meta.items():
            check_printable(key, "meta key")
            check_printable(item, f"meta.{key}")
    except FieldError as exc:
        raise _Invalid(exc.field, exc.message) from None


_OpenAPIField = Annotated[
    Raw,
    Meta(
        extra_json_schema={
            "description": "absent keeps the stored document, null removes it",
            "anyOf": [{"$ref": "#/components/schemas/OpenAPIDocument"}, {"type": "null"}],
        }
    ),
]


class RegistrationBody(Registration, frozen=True, forbid_unknown_fields=True, gc=False):
    """The body of `PUT /v1/services/{id}`: a registration, and its OpenAPI document
    (absent keeps the stored one, null removes it), left as raw JSON until needed."""

    id: Id | UnsetType = UNSET  # type: ignore[assignment]  # the path names it too
    openapi: _OpenAPIField | UnsetType = UNSET


class _DocumentHead(Struct):
    """Just enough of an OpenAPI document to know it is one; the rest is skipped."""

    openapi: Any = UNSET
    swagger: Any = UNSET


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


class Document(Struct, frozen=True, gc=False):
    """An OpenAPI document as stored and served: its canonical JSON and that text's sha256."""

    sha256: str
    body: bytes

    @classmethod
    def of(cls, body: bytes) -> Document:
        return cls(hashlib.sha256(body).hexdigest(), body)


OpenAPIChange = Document | None | _Keep


def canonical_document(document: Any) -> bytes:
    """The one encoding of a document both sides hash: sorted keys, no spaces."""
    return ENCODER_SORTED.encode(document)


def openapi_digest(document: Any) -> str:
    """The sha256 both sides compute over a document, independent of key order."""
    return hashlib.sha256(canonical_document(document)).hexdigest()


def check_openapi(value: object, field: str = "openapi") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(field, f"must be an object, got {json_type_name(value)}")
    if "openapi" not in value and "swagger" not in value:
        raise FieldError(field, "must be an OpenAPI document (an 'openapi' or 'swagger' key)")
    return value


def _document_change(raw: Raw | UnsetType) -> OpenAPIChange:
    if raw is UNSET:
        return KEEP
    text = bytes(raw)
    if text == b"null":
        return None
    try:
        head = _HEAD_DECODER.decode(text)
    except RecursionError:
        raise _too_deep("openapi") from None
    except msgspec.ValidationError:
        kind = {ord("["): "a list", ord('"'): "a string"}.get(text[0], "not an object")
        raise FieldError("openapi", f"must be an object or null, got {kind}") from None
    if head.openapi is UNSET and head.swagger is UNSET:
        raise FieldError("openapi", "must be an OpenAPI document (an 'openapi' or 'swagger' key)")
    return Document.of(text)


def registration_body(registration: Registration, openapi: bytes | _Keep | None = KEEP) -> bytes:
    """The PUT body for `registration`: with the (canonical) document, with `null` to
    remove the stored one, or without the key to keep it."""
    body = ENCODER.encode(registration)
    if openapi is KEEP:
        return body
    return body[:-1] + b',"openapi":' + (b"null" if openapi is None else openapi) + b"}"  # type: ignore[operator]


def parse_registration(body: Any, path_id: str | None = None) -> tuple[Registration, OpenAPIChange]:
    """`decode_registration` for a body already parsed into plain values; the registration
    comes back as a plain Registration (the hot path keeps the body it decoded)."""
    decoded, change = decode_registration(
        body if isinstance(body, bytes) else encode(body), path_id
    )
    fields = {name: getattr(decoded, name) for name in REGISTRATION_FIELDS}
    return Registration(**fields), change


def decode_registration(
    body: bytes, path_id: str | None = None
) -> tuple[Registration, OpenAPIChange]:
    """Decode and validate a PUT body in one pass. `path_id` (from the URL) must agree
    with `id` if the body has one too. Every failure is a FieldError."""
    try:
        parsed = _BODY_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise explain(exc, body, RegistrationBody) from None
    except msgspec.DecodeError as exc:
        raise _bad_json(exc, body) from None
    except RecursionError:  # an OpenAPI document nested past msgspec's depth limit
        raise _too_deep() from None
    if parsed.id is UNSET:
        if path_id is None:
            raise FieldError("id", "is required", code="missing_field")
        msgspec.structs.force_setattr(parsed, "id", convert(path_id, Id, "id"))
    elif path_id is not None and parsed.id != path_id:
        raise FieldError("id", f"{parsed.id!r} disagrees with the path's id {path_id!r}")
    return parsed, _document_change(parsed.openapi)


# --- what the master keeps -------------------------------------------------------------


class CheckResult(Struct, frozen=True, gc=False):
    """One probe's outcome. A failed probe is data, not an exception.

    `output` is the service's own text (for a sidecar, the `output` of its /health answer,
    not the JSON around it); `detail` keeps the rest of such an answer as data (the check
    kind, its duration, process figures), so readers need not parse JSON out of a string.
    """

    status: Status
    output: str
    duration_ms: float
    at: Time = msgspec.field(default_factory=Time.now)
    http_status: int | None = None
    detail: dict[str, Any] | None = None


class Transition(Struct, frozen=True, gc=False):
    """One status change of a service, for its timeline."""

    at: Time
    from_: Status = msgspec.field(name="from")
    to: Status = Status.UNKNOWN
    output: str = ""  # why: the check's output at the change
    duration_ms: float = 0.0


class Record(Registration, kw_only=True, frozen=True, forbid_unknown_fields=False, gc=False):
    """A registration as the master holds it, with its health. Encoded without the
    document, which is kept once per distinct content and named by `openapi_sha256`.

    `history` is the service's last status changes, oldest first (HISTORY_PER_SERVICE at
    most): stored with the record, so it is as durable as the record and the same on every
    master, and last of its fields, so answers can leave it out (`without_history`)."""

    def __post_init__(self) -> None:
        """Built from a registration already validated, or read back from the store."""

    status: Status = Status.UNKNOWN
    registered_at: Time = _default(Time, 0)
    updated_at: Time = _default(Time, 0)
    status_changed_at: Time = _default(Time, 0)
    status_reason: str = ""  # why it has its status, as text ("connection refused by ...")
    flapping: bool = False  # more than FLAP_TRANSITIONS changes within FLAP_WINDOW
    openapi_sha256: str | None = None
    last_check: CheckResult | None = None
    history: tuple[Transition, ...] = ()

    def same_registration(self, other: Registration) -> bool:
        return all(getattr(self, f) == getattr(other, f) for f in REGISTRATION_FIELDS)

    @property
    def check_url(self) -> str | None:
        return self.check.url if self.check is not None else None


HISTORY_PER_SERVICE: Final = 20  # status changes kept per service, oldest dropped first
# A change's reason in the timeline: the head of the check's output. The record's current
# reason keeps OUTPUT_MAX; twenty full outputs a service would be 80 KiB in every write.
TRANSITION_OUTPUT_MAX: Final = 256
FLAP_TRANSITIONS: Final = 5  # more changes than this...
FLAP_WINDOW: Final = 600.0  # ...within this many seconds: flapping
HISTORY_MARK: Final = b',"history":['


def without_history(stored: bytes) -> bytes:
    """A record's JSON without its `history` (its last field; in a JSON string a quote is
    escaped, so the mark cannot be met inside one)."""
    cut = stored.rfind(HISTORY_MARK)
    return stored if cut < 0 else stored[:cut] + b"}"


def with_transition(record: Record, status: Status, output: str, duration_ms: float) -> Record:
    """`record` moved to `status`: its new status, since when and why, its timeline."""
    now = Time.now()
    change = Transition(now, record.status, status, output[:TRANSITION_OUTPUT_MAX], duration_ms)
    history = (*record.history, change)[-HISTORY_PER_SERVICE:]
    recent = sum(1 for t in history if now - t.at <= FLAP_WINDOW)
    return msgspec.structs.replace(
        record,
        status=status,
        status_changed_at=now,
        status_reason=output[:OUTPUT_MAX],
        flapping=recent > FLAP_TRANSITIONS,
        history=history,
    )


def new_record(registration: Registration, **health: Any) -> Record:
    """A Record holding `registration`'s fields (the same objects) and `health`."""
    r = registration
    return Record(
        id=r.id,
        name=r.name,
        address=r.address,
        port=r.port,
        scheme=r.scheme,
        tags=r.tags,
        meta=r.meta,
        check=r.check,
        instance=r.instance,
        draining=r.draining,
        **health,
    )


class ServiceList(Struct, frozen=True):
    """The answer of `GET /v1/services`."""

    index: int
    services: list[Record]


class Health(Struct, frozen=True, omit_defaults=True):
    """The answer of `GET /healthz`: "degraded" while the store is out of reach; `alerts`
    name what an operator should look at though the master itself is fine
    (`eviction_guard_holding`)."""

    status: Literal["ok", "degraded"]
    services: int
    index: int
    store: dict[str, Any]
    cluster: dict[str, Any]
    alerts: list[str] = []
    eviction_guard: dict[str, Any] = {}


class ErrorDetail(Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    field: Annotated[str, Meta(description="dotted path of the bad field: tags[3]")] = ""


class ErrorAnswer(Struct, frozen=True):
    """Every error answer: `{"error": {code, message, field}}`."""

    error: ErrorDetail


WIRE_TYPES: Final = (RegistrationBody, Record, ServiceList, Health, ErrorAnswer, Transition)
"""What /openapi.json publishes as schemas, read off the types above."""


def json_schemas(ref_template: str) -> dict[str, Any]:
    """The JSON Schema of every wire type (and of the types they hold), by name."""
    _, components = msgspec.json.schema_components(
        WIRE_TYPES, schema_hook=_schema_hook, ref_template=ref_template
    )
    return components


# --- encoding and decoding, one library, one place ---------------------------------------

ENCODER: Final = msgspec.json.Encoder(enc_hook=_enc_hook)
ENCODER_SORTED: Final = msgspec.json.Encoder(enc_hook=_enc_hook, order="sorted")
_BODY_DECODER: Final = msgspec.json.Decoder(RegistrationBody, dec_hook=_dec_hook)
_RECORD_DECODER: Final = msgspec.json.Decoder(Record, dec_hook=_dec_hook)
_HEAD_DECODER: Final = msgspec.json.Decoder(_DocumentHead)
_ANY_DECODER: Final = msgspec.json.Decoder()


def encode(value: Any) -> bytes:
    """Compact JSON of a model value or of plain data (the one JSON writer)."""
    return ENCODER.encode(value)


def to_builtins(value: Any) -> Any:
    """A model value as plain JSON values (dicts, lists, strings), durations as `10s`."""
    return msgspec.to_builtins(value, enc_hook=_enc_hook)


def dumps_compact(value: Any) -> str:
    return ENCODER.encode(value).decode()


def loads_json(body: bytes | str) -> Any:
    """Parse JSON of any shape; every failure is a FieldError (invalid_json), never a crash:
    NaN, a lone surrogate, nesting past msgspec's depth limit and huge integers included."""
    try:
        return _ANY_DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise _bad_json(exc, body) from None
    except msgspec.ValidationError:  # an integer past 64 bits
        raise FieldError("", "invalid JSON: a number too large", "invalid_json") from None
    except RecursionError:
        raise _too_deep() from None


def _too_deep(field: str = "") -> FieldError:
    return FieldError(field, "invalid JSON: nested too deeply", "invalid_json")


def decode_record(body: bytes) -> Record:
    """A record as the store holds it (written by `encode`)."""
    return _RECORD_DECODER.decode(body)


def convert(
    value: Any, kind: Any, field: str, type_name: Callable[[object], str] | None = None
) -> Any:
    """Validate a plain value (from YAML, a query string) against a model type; the same
    rules and messages as a request body, at `field`."""
    try:
        return msgspec.convert(value, kind, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise explain(exc, value, kind, field, type_name) from None


# --- one field at a time, for the YAML files and the compatibility routes --------------

_BOUNDED: dict[tuple[Any, ...], Any] = {}


def _bounded(kind: type, **bounds: Any) -> Any:
    """`Annotated[kind, Meta(**bounds)]`, built once per set of bounds."""
    key = (kind, *sorted(bounds.items()))
    annotated = _BOUNDED.get(key)
    if annotated is None:
        meta = _text(**bounds) if kind is str else Meta(**bounds)
        annotated = _BOUNDED[key] = Annotated[kind, meta]
    return annotated


def check_text(value: object, field: str, max_len: int, *, min_len: int = 1) -> str:
    """A printable string within length bounds."""
    text: str = convert(value, _bounded(str, max_length=max_len, min_length=min_len), field)
    return check_printable(text, field)


def check_int(value: object, field: str, low: int, high: int) -> int:
    number: int = convert(value, _bounded(int, ge=low, le=high), field)
    return number


def check_name(value: object, field: str = "name") -> str:
    name: str = convert(value, Name, field)
    return name


def check_id(value: object, field: str = "id") -> str:
    ident: str = convert(value, Id, field)
    return ident


def check_tags(value: object, field: str = "tags") -> tuple[str, ...]:
    """Tags in order, duplicates dropped (a tag is a set member; order is kept for display)."""
    tags: tuple[str, ...] = convert(value, Tags, field)
    for i, tag in enumerate(tags):
        check_printable(tag, f"{field}[{i}]")
    return tuple(dict.fromkeys(tags))


def check_meta(value: object, field: str = "meta") -> dict[str, str]:
    meta: dict[str, str] = convert(value, MetaMap, field)
    for key, item in meta.items():
        check_printable(key, f"{field} key")
        check_printable(item, f"{field}.{key}")
    return meta


def check_url(value: object, field: str) -> str:
    url: str = convert(value, Url, field)
    if not url.startswith(("http://", "https://")) or " " in url or not url.isprintable():
        raise FieldError(field, _explain_url(url))
    return url


def _bad_json(exc: msgspec.DecodeError, body: bytes | str) -> FieldError:
    """msgspec refuses a lone `\ud800` escape as it refuses broken JSON. JSON's grammar
    allows it, though no text holds it: name the field, as for any other bad character."""
    text = str(exc).removeprefix("JSON is malformed: ")
    offset = len(body)
    if "surrogate" in text or "truncated" in text:
        field = _lone_surrogate_at(body)
        if field is not None:
            return FieldError(field, "must not contain lone surrogate code points")
        text = "the JSON ends too soon"
    elif (found := _BYTE_RE.search(text)) is not None:
        offset, text = int(found.group(1)), text[: found.start()].rstrip()
    head = body[:offset] if isinstance(body, bytes) else body[:offset].encode()
    line = head.count(b"\n") + 1
    column = offset - (head.rfind(b"\n") + 1) + 1
    return FieldError(
        "", f"invalid JSON at line {line} column {column}: {text}", code="invalid_json"
    )


def _lone_surrogate_at(body: bytes | str) -> str | None:
    """The dotted path of the first string holding a lone surrogate, if `body` is JSON."""
    try:
        value = json.loads(body, parse_constant=lambda name: None)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop(0)
        if isinstance(item, str) and not item.isprintable() and _has_surrogate(item):
            return path or "body"
        if isinstance(item, dict):
            for key, child in item.items():
                if _has_surrogate(key):
                    return f"{path} key".strip()
                stack.append((_join(path, key), child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


# --- from msgspec's terse errors to messages a person can act on -----------------------

_AT_RE: Final = re.compile(
    r"^(?P<text>.*?)(?: - at `(?P<key>key)` in `(?P<kpath>[^`]*)`| - at `(?P<path>[^`]*)`)?$", re.S
)
_SEGMENT_RE: Final = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+|\.\.\.)\]")
_QUOTED_RE: Final = re.compile(r"`([^`]*)`")
_BYTE_RE: Final = re.compile(r"\(byte (\d+)\)")
_HUGE_NUMBER_RE: Final = re.compile(rb"\d{4301}")  # Python's own limit for int("...")
_JSON_TYPE_NAMES: Final = {
    dict: "an object",
    list: "a list",
    tuple: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


def json_type_name(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


class _Invalid(ValueError):
    """Raised in a `__post_init__` for a rule between fields; names the field it blames."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def explain(
    exc: msgspec.ValidationError,
    source: Any,
    root: Any,
    prefix: str = "",
    type_name: Callable[[object], str] | None = None,
) -> FieldError:
    """The FieldError for msgspec's error `exc` about `source` (bytes of JSON, or a plain
    value) decoded as `root`: the dotted field, and a message built from the declared type
    and the value actually sent. Runs only on the error path."""
    name = type_name or json_type_name
    match = _AT_RE.match(str(exc))
    assert match is not None  # the pattern matches any text
    text = match.group("text")
    path = match.group("kpath") or match.group("path") or "$"
    if text.startswith("Integer value out of range"):  # past 64 bits: no plain decode either
        if isinstance(source, bytes | bytearray) and _HUGE_NUMBER_RE.search(source):
            return FieldError("", "invalid JSON: a number of over 4300 digits", "invalid_json")
        kind, _, field = _walk(path, root, None, prefix)
        return FieldError(field, f"must be {kind.ge}..{kind.le}, got a number that large")
    value = loads_json(bytes(source)) if isinstance(source, bytes | bytearray) else source
    kind, value, field = _walk(path, root, value, prefix)
    if match.group("key"):
        return _explain_key(text, kind, value, field)
    quoted = _QUOTED_RE.findall(text)
    if text.startswith("Object contains unknown field"):
        return FieldError(_join(field, quoted[0]), "unknown field", code="unknown_field")
    if text.startswith("Object missing required field"):
        return FieldError(_join(field, quoted[0]), "is required", code="missing_field")
    cause = exc.__cause__
    if isinstance(cause, _Invalid):
        return FieldError(_join(field, cause.field), cause.message)
    if not text.startswith(("Expected", "Invalid enum value")):
        return FieldError(field, text)  # a message of ours, from a dec_hook
    return FieldError(field, _explain(kind, value, name, top=not field))


def _join(field: str, child: str) -> str:
    return f"{field}.{child}" if field else child


def _walk(path: str, kind: Any, value: Any, field: str) -> tuple[Any, Any, str]:
    """Follow msgspec's `$.check.url` / `$.tags[3]` / `$.meta[...]` through the type and the
    value alike; returns the type info, the value and the dotted field found there."""
    info = _unwrap(msgspec.inspect.type_info(kind))
    for attr, index in _SEGMENT_RE.findall(path[1:]):
        info = _struct_in(info)
        if attr:
            info = _unwrap(next(f.type for f in info.fields if f.encode_name == attr))
            value = value.get(attr) if isinstance(value, dict) else None
            field = _join(field, attr)
        elif index == "...":  # a dict value: find the one that fails
            value_type = info.value_type
            bad = next(
                (k for k, v in value.items() if not _valid(v, value_type)), next(iter(value))
            )
            info, value, field = _unwrap(value_type), value[bad], f"{field}.{bad}"
        else:
            info = _unwrap(info.item_type)
            value = value[int(index)] if isinstance(value, list | tuple) else None
            field = f"{field}[{index}]"
    return info, value, field


def _struct_in(node: Any) -> Any:
    info = node.info if isinstance(node, _Info) else node
    if isinstance(info, msgspec.inspect.UnionType):
        return next(t for t in info.types if isinstance(t, msgspec.inspect.StructType))
    return info


def _unwrap(info: Any) -> Any:
    """Type info with its Meta extras folded in as `.extra` (None when there are none)."""
    extra: dict[str, Any] = {}
    while isinstance(info, msgspec.inspect.Metadata):
        extra.update(info.extra or {})
        info = info.type
    return _Info(info, extra)


class _Info:
    """A type info node and the `extra` of the Meta around it."""

    def __init__(self, info: Any, extra: dict[str, Any]) -> None:
        self.info = info
        self.extra = extra

    def __getattr__(self, name: str) -> Any:
        return getattr(self.info, name)


def _valid(value: Any, kind_info: Any) -> bool:
    return _explain(_unwrap(kind_info), value, json_type_name, top=False, probe=True) == ""


def _explain(
    node: Any, value: Any, name: Callable[[object], str], *, top: bool, probe: bool = False
) -> str:
    """Why `value` does not fit `node` (a type info), in words; "" if it fits (probe)."""
    info = node.info if isinstance(node, _Info) else node
    rule = node.extra.get("rule") if isinstance(node, _Info) else None
    inspect = msgspec.inspect
    if isinstance(info, inspect.IntType):
        low, high = info.ge, info.le
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer {low}..{high}, got {name(value)}"
        if (low is not None and value < low) or (high is not None and value > high):
            shown = value if abs(value) < 10**12 else "a number that large"
            return f"must be {low}..{high}, got {shown}"
        return ""
    if isinstance(info, inspect.StrType):
        return _explain_text(info, rule, value, name)
    if isinstance(info, inspect.LiteralType):
        if value in info.values:
            return ""
        return f"must be {' or '.join(map(str, info.values))}, got {value!r}"
    if isinstance(info, inspect.VarTupleType | inspect.ListType):
        if not isinstance(value, list | tuple):
            return f"must be a list of strings, got {name(value)}"
        if info.max_length is not None and len(value) > info.max_length:
            noun = node.extra.get("noun", "items")
            return f"must hold at most {info.max_length} {noun}, got {len(value)}"
        return ""
    if isinstance(info, inspect.DictType):
        if not isinstance(value, dict):
            return f"must be {name({})} of strings, got {name(value)}"
        if info.max_length is not None and len(value) > info.max_length:
            return f"must hold at most {info.max_length} keys, got {len(value)}"
        return ""
    if isinstance(info, inspect.UnionType):
        return f"must be {name({})} or null, got {name(value)}"
    if isinstance(info, inspect.StructType):
        what = "body" if top else ""
        return f"{what} must be {'a JSON object' if top else name({})}, got {name(value)}".strip()
    return "" if probe else f"is not valid here, got {name(value)}"


def _explain_text(info: Any, rule: str | None, value: Any, name: Callable[[object], str]) -> str:
    if not isinstance(value, str):
        return f"must be a string, got {name(value)}"
    if info.min_length and len(value) < info.min_length:
        if rule == "url":
            return _explain_url(value)
        return (
            "must not be empty"
            if info.min_length == 1
            else f"must be at least {info.min_length} characters"
        )
    if info.max_length is not None and len(value) > info.max_length:
        return f"must be at most {info.max_length} characters, got {len(value)}"
    if not value.isprintable():
        return _unwanted_character(next(c for c in value if not c.isprintable()))
    if info.pattern is None or re.search(info.pattern, value):
        return ""
    if rule == "name":
        return (
            "must be lowercase letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit, got {value!r}"
        )
    if rule == "id":
        return (
            "must be letters, digits, '.', '_', ':', '@' or '-', starting with a letter or "
            f"digit, got {value!r}"
        )
    if rule == "url":
        return _explain_url(value)
    return f"must match {info.pattern}, got {value!r}"


def _explain_url(url: str) -> str:
    if not url.isprintable():
        return _unwanted_character(next(c for c in url if not c.isprintable()))
    if " " in url:
        return "must not contain spaces"
    return f"must be an http:// or https:// URL, got {url!r}"


def _unwanted_character(char: str) -> str:
    category = unicodedata.category(char)
    if category == "Cs":
        return "must not contain lone surrogate code points"
    if category == "Cc":
        return "must not contain control characters"
    shown = f"U+{ord(char):04X} {unicodedata.name(char, 'unassigned')}"
    if category in ("Cn", "Co"):
        return f"must not contain unassigned or private-use characters ({shown})"
    if category == "Zs":
        return f"must not contain spaces other than the plain space ({shown})"
    return (
        f"must not contain invisible or direction-changing characters ({shown}): "
        "they make text look like other text"
    )


def _explain_key(text: str, node: Any, mapping: Any, field: str) -> FieldError:
    key_info = _unwrap(node.key_type)
    keys: Iterable[Any] = mapping if isinstance(mapping, dict) else ()
    for key in keys:
        message = _explain(key_info, key, json_type_name, top=False, probe=True)
        if message:
            return FieldError(f"{field} key", message)
    return FieldError(f"{field} key", text)
