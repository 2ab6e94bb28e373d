"""The original picoapi 1.0.4 master's routes, answered from our registry.

Services built on `picoapi` PUT `{"name", "tags", "host", "port", "healthcheck"}` to
`/register` when they start (its own master only routed GET there, with the same body), and
dashboards read `/services/status` and `/services/definition`. Those bodies are mapped onto
a Registration here and go through the same registry calls as `/v1/services`.

The mapping, and why:
- picoapi names are FastAPI titles ("Example Service"), not our `[a-z0-9._-]` names, so
  the name and id become a slug ("example-service") and the original is kept in
  `meta["picoapi_name"]`, which is what the picoapi routes show. The id is that name with
  the host and port (picoapi's own id, the name alone, let a second replica replace the
  first), so replicas sit side by side and a restarted service replaces only its own
  entry; an id already held by a differently named service is
  refused rather than silently overwritten.
- `port` and `healthcheck.interval` come from environment variables, so they may be strings;
  the interval is in seconds (picoapi's default 30 when absent or null).
- `API_TAGS` unset gives `[""]`: empty tags are dropped.
- `metadata` was any JSON object: non-string values are stored as their JSON text, so
  nothing that picoapi accepted is refused, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import unicodedata
from typing import Any, Final

import aiohttp
from aiohttp import web
from yarl import URL

from master.api import (
    AUTH,
    BODY_MAX,
    POLICY,
    REGISTRY,
    json_response,
    raw_json_response,
    read_body,
    refuse_check_url,
    scope_of,
)
from master.auth import may_write
from master.errors import BadRequest, PayloadTooLarge
from master.model import (
    ADDRESS_MAX,
    DEFAULT_DEREGISTER_AFTER,
    ID_MAX,
    KEEP,
    META_KEYS_MAX,
    META_VALUE_MAX,
    NAME_MAX,
    TAG_MAX,
    CheckSpec,
    FieldError,
    Record,
    Registration,
    Status,
    check_int,
    check_meta,
    check_tags,
    check_text,
    convert,
    dumps_compact,
    encode,
    loads_json,
    parse_duration,
)
from master.policy import CheckPolicy, PolicyResolver
from master.shared.capped import read_capped

PICOAPI_NAME: Final = "picoapi_name"  # the meta key holding the name as the service sent it
DEFAULT_INTERVAL: Final = 30.0  # picoapi's HealthCheckDefinition default, in seconds
CHECK_TIMEOUT: Final = 3.0  # picoapi's own health probe gave up after 3 s

HEALTHY: Final = "healthy"
UNHEALTHY: Final = "unhealthy"
NO_HEALTHCHECK: Final = "No healthcheck!"

# /services/definition fetches a document the service has not given us, as picoapi did,
# bounded so a slow or huge answer costs little.
DOCUMENT_PATH: Final = "/openapi.json"
DOCUMENT_TIMEOUT: Final = 3.0
DOCUMENT_MAX: Final = 8 << 20
DOCUMENT_FETCHES: Final = 16
NOT_RUNNING: Final = {"status": "not running!"}  # picoapi's answer when there is no document

_SECONDS_RE: Final = re.compile(r"\s*\d+(\.\d+)?\s*")
_PORT_RE: Final = re.compile(r"\s*\d{1,5}\s*")
_NOT_IN_NAME_RE: Final = re.compile(r"[^a-z0-9._-]+")
_NOT_IN_ID_RE: Final = re.compile(r"[^A-Za-z0-9._:@-]+")
PICOAPI_DEREGISTER_AFTER: Final = web.AppKey("picoapi_deregister_after", float)


# --- the picoapi body -> a Registration ------------------------------------------------


def slug(name: str) -> str:
    """A name our pattern accepts, as close to the original as it can be."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = _NOT_IN_NAME_RE.sub("-", ascii_name.lower()).strip("-._")[:NAME_MAX].rstrip("-._")
    if text:
        return text
    # Nothing ASCII to keep ("日本語"): a stable name still registers the service.
    return "picoapi-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]


def _tags(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise FieldError("tags", "must be a list of strings")
    kept = []
    for i, tag in enumerate(value):
        if tag == "":  # API_TAGS unset splits into [""]
            continue
        kept.append(check_text(tag, f"tags[{i}]", TAG_MAX))
    return check_tags(kept)


def _port(value: object) -> int:
    if isinstance(value, str) and _PORT_RE.fullmatch(value):
        value = int(value)
    if value is None:
        raise FieldError("port", "is required", code="missing_field")
    return check_int(value, "port", 1, 65535)


def _meta(value: object, name: str) -> dict[str, str]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise FieldError("metadata", "must be an object or null")
    texts = {k: v if isinstance(v, str) else dumps_compact(v) for k, v in value.items()}
    meta = check_meta(texts, "metadata")
    meta[PICOAPI_NAME] = name
    if len(meta) > META_KEYS_MAX:
        raise FieldError(
            "metadata", f"must hold at most {META_KEYS_MAX - 1} keys ({PICOAPI_NAME} is ours)"
        )
    return meta


def _interval(value: object) -> float:
    if value is None:
        return DEFAULT_INTERVAL
    if isinstance(value, str) and _SECONDS_RE.fullmatch(value):
        return float(value)
    return parse_duration(value, "healthcheck.interval")


def _check(value: object, deregister_after: float) -> CheckSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError("healthcheck", "must be an object with url and interval, or null")
    if "url" not in value:
        raise FieldError("healthcheck.url", "is required", code="missing_field")
    interval = _interval(value.get("interval"))
    timeout = min(CHECK_TIMEOUT, interval / 2)
    spec: CheckSpec = convert(
        {
            "url": value["url"],
            "interval": interval,
            "timeout": timeout,
            "deregister_after": deregister_after,
        },
        CheckSpec,
        "healthcheck",
    )
    return spec


def parse_picoapi(body: object, deregister_after: float = DEFAULT_DEREGISTER_AFTER) -> Registration:
    """Validate a picoapi registration body; unknown keys are ignored, as picoapi did.

    The id is the name's slug with the host and port: replicas of one service sit side by
    side, and a service restarted where it was replaces only its own entry. A service with
    a health check is removed after `deregister_after` critical (picoapi never removed a
    dead one)."""
    if not isinstance(body, dict):
        raise FieldError("", "body must be a JSON object")
    for required in ("name", "host", "port"):
        if required not in body:
            raise FieldError(required, "is required", code="missing_field")
    name = check_text(body["name"], "name", META_VALUE_MAX)
    host = check_text(body["host"], "host", ADDRESS_MAX)
    port = _port(body["port"])
    return Registration(
        id=instance_id(slug(name), host, port),
        name=slug(name),
        address=host,
        port=port,
        tags=_tags(body.get("tags")),
        meta=_meta(body.get("metadata"), name),
        check=_check(body.get("healthcheck"), deregister_after),
    )


def instance_id(name: str, host: str, port: int) -> str:
    """`<name>-<host>-<port>`, in the id's characters and length."""
    where = _NOT_IN_ID_RE.sub("-", host).strip("-") or "host"
    tail = f"-{where}-{port}"
    return (name[: ID_MAX - len(tail)] + tail)[:ID_MAX]


def picoapi_name(record: Record) -> str:
    """The name as the service gave it: the picoapi one, else our own."""
    return record.meta.get(PICOAPI_NAME, record.name)


# --- handlers --------------------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    """PUT or GET /register. Answers `null`, as picoapi's master did (its handler returned None)."""
    # A GET passes the middleware as a read; it writes, so it needs what a PUT needs.
    scope = scope_of(request)
    if request.method == "GET":
        scope = request.app[AUTH].scope("PUT", request.headers, request.query)
    raw = await read_body(request)
    if len(raw) > BODY_MAX:
        raise PayloadTooLarge("a picoapi registration is limited to 1 MiB")
    after = request.app.get(PICOAPI_DEREGISTER_AFTER, DEFAULT_DEREGISTER_AFTER)
    registration = parse_picoapi(loads_json(raw), after)
    registry = request.app[REGISTRY]
    held = registry.get(registration.id)
    may_write(scope, registration.name, held.name if held else None)
    if registration.check is not None:
        refuse_check_url(request, registration.check.url, field="healthcheck.url")
    if held is not None and picoapi_name(held) != registration.meta[PICOAPI_NAME]:
        raise BadRequest(
            f"{registration.meta[PICOAPI_NAME]!r} maps to the service id {registration.id!r}, "
            f"which {picoapi_name(held)!r} already holds",
            field="name",
            code="name_taken",
        )
    await registry.put(registration, openapi=KEEP)
    return json_response(None)


async def services_status(request: web.Request) -> web.Response:
    """`[{"name", "status"}]`: healthy, unhealthy or "No healthcheck!", as picoapi showed."""
    return json_response(
        [
            {"name": picoapi_name(record), "status": _picoapi_status(record)}
            for record in request.app[REGISTRY].query()
        ]
    )


def _picoapi_status(record: Record) -> str:
    if record.check is None:
        return NO_HEALTHCHECK
    return HEALTHY if record.status is Status.PASSING else UNHEALTHY


async def services_definition(request: web.Request) -> web.Response:
    """`[{name: document}]`, the answer picoapi's master meant to give here.

    (Its route was wired to the status handler by mistake; the handler it wrote fetched
    each service's `/openapi.json`.) A stored document is served as is; a picoapi service,
    which never sends one, has it fetched now; without one, picoapi's `not running!`.
    """
    records = request.app[REGISTRY].query()
    registry = request.app[REGISTRY]
    missing = [r for r in records if r.openapi_sha256 is None and PICOAPI_NAME in r.meta]
    fetched: dict[str, dict[str, Any]] = {}
    if missing:
        limit = asyncio.Semaphore(DOCUMENT_FETCHES)
        timeout = aiohttp.ClientTimeout(total=DOCUMENT_TIMEOUT)
        # The master fetches what it is told to, as it checks: under the same policy (an
        # address judged here, a name on what it resolves to, as master.health does).
        policy = request.app[POLICY]
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(policy))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            documents = await asyncio.gather(*(_fetch(session, limit, r, policy) for r in missing))
        fetched = {r.id: d for r, d in zip(missing, documents, strict=True)}
    parts = []
    for record in records:
        document = registry.document(record.openapi_sha256)
        body = document.body if document else encode(fetched.get(record.id, NOT_RUNNING))
        parts.append(b"{%s:%s}" % (encode(picoapi_name(record)), body))
    return raw_json_response(b"[" + b",".join(parts) + b"]")


async def _fetch(
    session: aiohttp.ClientSession, limit: asyncio.Semaphore, record: Record, policy: CheckPolicy
) -> dict[str, Any]:
    """The service's own document, or picoapi's `not running!` for any failure."""
    registration = record
    async with limit:
        try:
            url = URL.build(
                scheme=registration.scheme,
                host=registration.address,
                port=registration.port,
                path=DOCUMENT_PATH,
            )
            if policy.url_refusal(str(url)) is not None:
                return NOT_RUNNING
            async with session.get(url, allow_redirects=False) as answer:
                if answer.status != 200:
                    return NOT_RUNNING
                body, more = await read_capped(answer.content, DOCUMENT_MAX)
                if more:
                    return NOT_RUNNING
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return NOT_RUNNING  # OSError: CheckRefused, a name resolving to refused addresses
    try:
        document = loads_json(body) if body is not None else None
    except FieldError:
        return NOT_RUNNING
    return document if isinstance(document, dict) else NOT_RUNNING


def add_routes(app: web.Application) -> None:
    # add_route, not add_get: a HEAD must not register anything.
    app.router.add_route("PUT", "/register", register)
    app.router.add_route("GET", "/register", register)
    app.router.add_get("/services/status", services_status)
    app.router.add_get("/services/definition", services_definition)
