"""The master's HTTP surface for /v1/services and friends: parse, validate, answer.

Handlers translate between HTTP and registry calls and nothing more. Errors are raised as
`ApiError`s (or the model's `FieldError`s) and rendered by the one middleware, which also
checks the token, stamps the registry index on every answer and counts the request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from aiohttp import web

from master.auth import Auth, may_write
from master.cluster import Ownership
from master.errors import (
    ApiError,
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    UnsupportedMediaType,
)
from master.eviction import EvictionGuard
from master.metrics import Metrics
from master.model import (
    Document,
    FieldError,
    Instance,
    Status,
    convert,
    decode_registration,
    encode,
    format_time,
    parse_duration,
)
from master.policy import CheckPolicy
from master.registry import DocumentsFull, IdHeld, Registry, TooManyWaiters
from master.shared.serving import request_done
from master.shared.tokens import EVERYTHING, Scope
from master.store.base import Store, StoreError

log = structlog.get_logger("master.api")

BODY_MAX: Final = 1 << 20  # a registration without an OpenAPI document
BODY_MAX_WITH_OPENAPI: Final = 8 << 20
BODY_TIMEOUTS: Final = 3  # a body may take this many read timeouts (30 s: 8 MiB at 2.2 Mbit/s)
WAIT_DEFAULT: Final = 300.0
WAIT_MAX: Final = 300.0
INDEX_HEADER: Final = "X-Picoapi-Index"
YIELD_AFTER_BYTES: Final = 64 << 10  # a ?openapi=true listing yields after a document this big
STALE_HEADER: Final = "X-Picoapi-Stale"  # seconds the store has been out of reach
JSON: Final = "application/json"

REGISTRY: Final = web.AppKey("registry", Registry)
STORE: Final = web.AppKey("store", Store)
OWNERSHIP: Final = web.AppKey("ownership", Ownership)
POLICY: Final = web.AppKey("policy", CheckPolicy)
READ_TIMEOUT: Final = web.AppKey("read_timeout", float)
EVICTION_GUARD: Final = web.AppKey("eviction_guard", EvictionGuard)
# The request's token scope, where a token was asked for (a typed key from aiohttp 3.14).
SCOPE: Final[Any] = (
    web.RequestKey("picoapi.scope", Scope) if hasattr(web, "RequestKey") else "picoapi.scope"
)
METRICS: Final = web.AppKey("metrics", Metrics)
AUTH: Final = web.AppKey("auth", Auth)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- answers ---------------------------------------------------------------------------


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode(body), status=status, content_type=JSON)


def raw_json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON)


def error_response(error: ApiError) -> web.Response:
    answer = json_response(error.to_json(), error.status)
    if isinstance(error, Unavailable):
        answer.headers["Retry-After"] = str(error.retry_after)
    return answer


# --- the middleware --------------------------------------------------------------------

_HTTP_ERRORS: Final[dict[int, type[ApiError]]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}

PUBLIC_PATHS: Final = frozenset({"/healthz", "/metrics", "/"})
"""Probes and the dashboard's static page need no token; the page holds no data."""


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one layer every request passes: the token, the one place errors become answers
    (`{"error": {code, message, field}}`), the index header, the request's metrics.
    One layer, not four: each layer costs a frame and a coroutine on every request."""
    started = time.perf_counter()
    app = request.app
    try:
        auth = app[AUTH]
        if auth.guards(request.method) and not _public(request.path):
            request[SCOPE] = auth.scope(request.method, request.headers, request.query)
        response = await handler(request)
    except Exception as exc:
        response = _error_answer(request, exc)
    if not response.prepared:  # a streamed answer stamped its header before it began
        response.headers[INDEX_HEADER] = str(app[REGISTRY].index)
        stale = app[STORE].stale_for()
        if stale is not None:  # the store is out of reach: this view may be behind
            response.headers[STALE_HEADER] = f"{stale:.1f}"
    app[METRICS].observe_request(request, response.status, time.perf_counter() - started)
    request_done(request)
    return response


def scope_of(request: web.Request) -> Scope:
    """What the caller's token may do (everything where no token is asked for)."""
    scope: Scope = request.get(SCOPE, EVERYTHING)
    return scope


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/dashboard/")


def _error_answer(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, ApiError):
        return error_response(exc)
    if isinstance(exc, FieldError):
        return error_response(ApiError.from_field_error(exc))
    if isinstance(exc, DocumentsFull):
        return error_response(PayloadTooLarge(str(exc), field="openapi"))
    if isinstance(exc, TooManyWaiters):
        return error_response(Unavailable(str(exc)))
    if isinstance(exc, IdHeld):
        return error_response(Conflict(str(exc), field="id"))
    if isinstance(exc, StoreError):
        request.app[METRICS].store_errors.inc()
        log.error("store_write_failed", path=request.path, reason=str(exc))
        return error_response(Unavailable("the store could not commit the change; retry"))
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return _http_error(request, exc)
    if isinstance(exc, web.HTTPException):
        raise exc  # a redirect is an answer
    log.exception("unhandled_error", method=request.method, path=request.path)
    return json_response(
        {"error": {"code": "internal", "message": "internal error; see the master's log"}}, 500
    )


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    kind = _HTTP_ERRORS.get(exc.status)
    message = exc.reason
    if exc.status == 405:
        message = f"{request.method} is not allowed on {request.path}; allowed: " + (
            exc.headers.get("Allow", "") or "none"
        )
    elif exc.status == 404:
        message = f"nothing at {request.path}; see /openapi.json for the API"
    elif exc.status == 413:
        message = "the body is over the 8 MiB limit"
    error = kind(message) if kind else ApiError(message, code="http_error")
    error.status = exc.status
    answer = error_response(error)
    if exc.status == 405 and "Allow" in exc.headers:
        answer.headers["Allow"] = exc.headers["Allow"]
    return answer


MIDDLEWARES: Final = (middleware,)


# --- request bodies --------------------------------------------------------------------


def _is_json(content_type: str) -> bool:
    return content_type in (JSON, "application/octet-stream") or content_type.endswith("+json")


async def read_body(request: web.Request, *, limit: int = BODY_MAX_WITH_OPENAPI) -> bytes:
    """The raw body, refused with 413 as soon as it passes `limit` (Content-Length is
    checked before a byte is read; aiohttp stops a longer chunked body at the app's cap)."""
    if request.headers.get("Content-Type") and not _is_json(request.content_type):
        raise UnsupportedMediaType(
            f"send the body as JSON (Content-Type: application/json), not {request.content_type}"
        )
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body of {length} bytes is over the {limit >> 20} MiB limit")
    allowed = request.app.get(READ_TIMEOUT, 10.0) * BODY_TIMEOUTS
    try:
        async with asyncio.timeout(allowed):
            body = await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {allowed:g}s") from None
    if len(body) > limit:
        raise PayloadTooLarge(f"body is over the {limit >> 20} MiB limit")
    if not body.strip():
        raise BadRequest("the body is empty; send a JSON object", code="invalid_json")
    return body


# --- handlers: /v1/services ------------------------------------------------------------


def _record_id(request: web.Request) -> str:
    return request.match_info["id"]


async def put_service(request: web.Request) -> web.Response:
    raw = await read_body(request)
    too_large = PayloadTooLarge("a registration without an OpenAPI document is limited to 1 MiB")
    if len(raw) > BODY_MAX and b'"openapi"' not in raw:
        raise too_large  # before a byte of it is validated
    registration, openapi = decode_registration(raw, path_id=_record_id(request))
    if len(raw) > BODY_MAX and not isinstance(openapi, Document):
        raise too_large
    registry = request.app[REGISTRY]
    held = registry.get(registration.id)
    may_write(scope_of(request), registration.name, held.name if held else None)
    refuse_check_url(request, registration.check.url if registration.check else None)
    record, _ = await registry.put(registration, openapi)
    return raw_json_response(registry.encoded(record))


def refuse_check_url(request: web.Request, url: str | None, field: str = "check.url") -> None:
    """400 `check_url_refused` for a check URL outside the check policy (master.policy)."""
    reason = None if url is None else request.app[POLICY].url_refusal(url)
    if reason is not None:
        raise BadRequest(
            f"the master may not check {url}: {reason}", field=field, code="check_url_refused"
        )


async def delete_service(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    instance = request.query.get("instance")
    if instance is not None:
        instance = convert(instance, Instance, "instance")
    held = registry.get(_record_id(request))
    may_write(scope_of(request), held.name if held else None)
    removed = await registry.delete(_record_id(request), instance=instance)
    if removed is None:
        raise NotFound(f"no service with id {_record_id(request)!r}")
    return raw_json_response(removed[1])


async def get_service(request: web.Request) -> web.Response:
    await block(request)
    registry = request.app[REGISTRY]
    record = registry.get(_record_id(request))
    if record is None:
        raise NotFound(f"no service with id {_record_id(request)!r}")
    return raw_json_response(registry.encoded(record))


async def get_service_history(request: web.Request) -> web.Response:
    """`{"history": [{"at", "from", "to", "output", "duration_ms"}, ...]}`, oldest first:
    the service's last status changes (master.model.HISTORY_PER_SERVICE at most)."""
    record = request.app[REGISTRY].get(_record_id(request))
    if record is None:
        raise NotFound(f"no service with id {_record_id(request)!r}")
    return raw_json_response(b'{"history":%s}' % encode(record.history))


async def get_service_openapi(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    record = registry.get(_record_id(request))
    if record is None:
        raise NotFound(f"no service with id {_record_id(request)!r}")
    document = registry.document(record.openapi_sha256)
    if document is None:
        raise NotFound(f"service {record.id!r} has no OpenAPI document")
    return raw_json_response(document.body)


def parse_bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    if value is None:
        return False
    if value.lower() in ("true", "1", "yes", ""):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"must be true or false, got {value!r}", field=name)


def parse_status(request: web.Request) -> Status | None:
    value = request.query.get("status")
    if value is None:
        return None
    try:
        return Status(value)
    except ValueError:
        raise BadRequest(
            f"must be one of {', '.join(s.value for s in Status)}, got {value!r}", field="status"
        ) from None


def index_of(request: web.Request) -> int | None:
    """A blocking query's `index=N`; None when it is not one."""
    index_text = request.query.get("index")
    if index_text is None:
        return None
    if not index_text.isdigit() or len(index_text) > 18:
        raise BadRequest(f"must be a non-negative integer, got {index_text!r}", field="index")
    return int(index_text)


async def block(request: web.Request) -> None:
    """A blocking query: with `index=N`, wait until the registry moves past N (or `wait`)."""
    index = index_of(request)
    if index is not None:
        await request.app[REGISTRY].wait(index, wait_of(request))


def wait_of(request: web.Request) -> float:
    """A blocking query's `wait` (default and limit 5m)."""
    wait = WAIT_DEFAULT
    if "wait" in request.query:
        try:
            wait = parse_duration(request.query["wait"], "wait")
        except FieldError as exc:
            raise BadRequest(exc.message, field="wait") from None
    return min(wait, WAIT_MAX)


def accepts_gzip(request: web.Request) -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "")


async def list_services(request: web.Request) -> web.StreamResponse:
    tags = request.query.getall("tag", [])
    name = request.query.get("name")
    status = parse_status(request)
    with_openapi = parse_bool(request, "openapi")
    await block(request)
    registry = request.app[REGISTRY]
    if with_openapi:
        return await _stream_with_documents(request, registry.query(tags, name, status))
    body, gzipped = registry.listing(tags, name, status, gzipped=accepts_gzip(request))
    response = raw_json_response(body)
    if gzipped:
        response.headers["Content-Encoding"] = "gzip"
        response.headers["Vary"] = "Accept-Encoding"
    return response


async def _stream_with_documents(request: web.Request, records: list[Any]) -> web.StreamResponse:
    """The listing with every document inside, written record by record: each document is
    already encoded bytes, so the loop never builds the whole answer, and between records
    it serves others."""
    registry = request.app[REGISTRY]
    response = web.StreamResponse(headers={"Content-Type": JSON})
    response.headers[INDEX_HEADER] = str(registry.index)
    await response.prepare(request)
    await response.write(b'{"index":%d,"services":[' % registry.index)
    separator = b""
    for record in records:
        if registry.get(record.id) is None:
            continue  # removed while we wrote: its bytes may be gone
        head, document, tail = registry.with_document(record)
        await response.write(separator + head)
        await response.write(document)
        await response.write(tail)
        separator = b","
        if len(document) > YIELD_AFTER_BYTES:
            # A write returns without yielding while the client keeps up: let others in.
            await asyncio.sleep(0)
    await response.write(b"]}")
    await response.write_eof()
    return response


async def list_tags(request: web.Request) -> web.Response:
    await block(request)
    return json_response(request.app[REGISTRY].tag_counts())


async def healthz(request: web.Request) -> web.Response:
    """Liveness, always 200 while the master runs; says when the store is out of reach
    (reads are then answered from memory, writes refused). `?ready` answers 503 then,
    for a readiness probe."""
    registry, store = request.app[REGISTRY], request.app[STORE]
    stale = store.stale_for()
    failure = registry.write_failure
    if failure is not None and (store.reachable_again_at or 0) > failure[0]:
        failure = None  # it failed while the store was away, and the store is back
    body: dict[str, Any] = {
        "status": "ok" if stale is None and failure is None else "degraded",
        "services": len(registry),
        "index": registry.index,
        "store": {
            "url": store.describe(),
            "reachable": stale is None,
            "writes": "ok" if failure is None else "failing",
        },
        "cluster": request.app[OWNERSHIP].describe(),
    }
    # An alert, not a fault of this master: its status and readiness stay as they are.
    holding = request.app[EVICTION_GUARD].holding()
    if holding:
        guard = request.app[EVICTION_GUARD]
        body["alerts"] = ["eviction_guard_holding"]
        body["eviction_guard"] = {
            "holding": holding,
            "share_per_minute": guard.share,
            "hold_max_s": guard.hold_max,
        }
    if stale is not None:
        body["store"].update(unreachable_for_s=round(stale, 1), error=store.last_error)
    if failure is not None:
        body["store"].update(last_write_failed_at=format_time(failure[0]), error=failure[1])
    ready = "ready" in request.query
    return json_response(body, 503 if ready and body["status"] != "ok" else 200)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(), content_type="text/plain", charset="utf-8"
    )


def add_routes(app: web.Application) -> None:
    app.router.add_put("/v1/services/{id}", put_service)
    app.router.add_delete("/v1/services/{id}", delete_service)
    app.router.add_get("/v1/services", list_services)
    app.router.add_get("/v1/services/{id}", get_service)
    app.router.add_get("/v1/services/{id}/openapi", get_service_openapi)
    app.router.add_get("/v1/services/{id}/history", get_service_history)
    app.router.add_get("/v1/tags", list_tags)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
