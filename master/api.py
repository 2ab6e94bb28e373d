"""The master's HTTP surface for /v1/services and friends: parse, validate, answer.

Handlers translate between HTTP and registry calls and nothing more. Errors are raised as
`ApiError`s and rendered by one middleware; the index header is added by another.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from aiohttp import web

from master.auth import Auth
from master.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from master.metrics import Metrics
from master.model import (
    FieldError,
    Record,
    Status,
    dumps_compact,
    loads_json,
    parse_duration,
    parse_registration,
)
from master.registry import Registry
from master.store.base import StoreError

log = structlog.get_logger("master.api")

BODY_MAX: Final = 1 << 20  # a registration without an OpenAPI document
BODY_MAX_WITH_OPENAPI: Final = 8 << 20
WAIT_DEFAULT: Final = 300.0
WAIT_MAX: Final = 300.0
INDEX_HEADER: Final = "X-Picoapi-Index"

REGISTRY: Final = web.AppKey("registry", Registry)
METRICS: Final = web.AppKey("metrics", Metrics)
AUTH: Final = web.AppKey("auth", Auth)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- answers ---------------------------------------------------------------------------


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps_compact(body), status=status, content_type="application/json")


def raw_json_response(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="application/json")


# --- middleware ------------------------------------------------------------------------

_HTTP_ERRORS: Final[dict[int, type[ApiError]]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place errors become answers: `{"error": {code, message, field}}`."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.to_json(), exc.status)
    except FieldError as exc:
        error = ApiError.from_field_error(exc)
        return json_response(error.to_json(), error.status)
    except StoreError as exc:
        request.app[METRICS].store_errors.inc()
        log.error("store_write_failed", path=request.path, reason=str(exc))
        error = Unavailable("the store could not commit the change; retry")
        return json_response(error.to_json(), error.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = _HTTP_ERRORS.get(exc.status)
        message = exc.reason
        if exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}; allowed: " + (
                exc.headers.get("Allow", "") or "none"
            )
        elif exc.status == 404:
            message = f"nothing at {request.path}; see /openapi.json for the API"
        error = kind(message) if kind else ApiError(message, code="http_error")
        error.status = exc.status
        answer = json_response(error.to_json(), exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return json_response(
            {"error": {"code": "internal", "message": "internal error; see the master's log"}},
            500,
        )


PUBLIC_PATHS: Final = frozenset({"/healthz", "/metrics", "/"})
"""Probes and the dashboard's static page need no token; the page holds no data."""


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.path.startswith("/dashboard/"):
        return await handler(request)
    if not request.app[AUTH].allows(request.method, request.headers.get("Authorization")):
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
    return await handler(request)


@web.middleware
async def answer_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On every answer: the registry index it reflects (taken after the handler ran), and
    the request's count and time in the metrics. One layer for both: each costs a frame
    on every request."""
    started = time.perf_counter()
    route = request.match_info.route.resource
    response = await handler(request)
    app = request.app
    response.headers[INDEX_HEADER] = str(app[REGISTRY].index)
    app[METRICS].observe_request(
        request.method,
        route.canonical if route is not None else "unmatched",
        response.status,
        time.perf_counter() - started,
    )
    return response


MIDDLEWARES: Final = (answer_middleware, error_middleware, auth_middleware)


# --- request bodies --------------------------------------------------------------------


def _is_json(content_type: str) -> bool:
    return content_type in ("application/json", "application/octet-stream") or (
        content_type.endswith("+json")
    )


async def read_body(request: web.Request, *, check_type: bool = True) -> bytes:
    """The raw body, refused with 413 as soon as it passes the largest limit.

    Content-Length is checked before a byte is read; a chunked body is read only up to
    the limit, so an endless body costs at most 8 MiB.
    """
    if check_type and request.headers.get("Content-Type") and not _is_json(request.content_type):
        raise UnsupportedMediaType(
            f"send the body as JSON (Content-Type: application/json), not {request.content_type}"
        )
    length = request.content_length
    if length is not None and length > BODY_MAX_WITH_OPENAPI:
        raise PayloadTooLarge(f"body of {length} bytes is over the 8 MiB limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > BODY_MAX_WITH_OPENAPI:
            raise PayloadTooLarge("body is over the 8 MiB limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request) -> Any:
    body = await read_body(request)
    if not body.strip():
        raise BadRequest("the body is empty; send a JSON object", code="invalid_json")
    return loads_json(body)


# --- handlers: /v1/services ------------------------------------------------------------


def _record_id(request: web.Request) -> str:
    return request.match_info["id"]


async def put_service(request: web.Request) -> web.Response:
    raw = await read_body(request)
    if not raw.strip():
        raise BadRequest("the body is empty; send a registration", code="invalid_json")
    body = loads_json(raw)
    if len(raw) > BODY_MAX and not (isinstance(body, dict) and body.get("openapi")):
        raise PayloadTooLarge("a registration without an OpenAPI document is limited to 1 MiB")
    registration, openapi = parse_registration(body, path_id=_record_id(request))
    record, _ = await request.app[REGISTRY].put(registration, openapi)
    return raw_json_response(request.app[REGISTRY].encoded(record))


async def delete_service(request: web.Request) -> web.Response:
    removed = await request.app[REGISTRY].delete(_record_id(request))
    if removed is None:
        raise NotFound(f"no service with id {_record_id(request)!r}")
    return json_response(removed.to_json())


def _get_record(request: web.Request) -> Record:
    record = request.app[REGISTRY].get(_record_id(request))
    if record is None:
        raise NotFound(f"no service with id {_record_id(request)!r}")
    return record


async def get_service(request: web.Request) -> web.Response:
    await block(request)
    return raw_json_response(request.app[REGISTRY].encoded(_get_record(request)))


async def get_service_openapi(request: web.Request) -> web.Response:
    record = _get_record(request)
    if record.openapi is None:
        raise NotFound(f"service {record.id!r} has no OpenAPI document")
    return json_response(record.openapi)


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


async def block(request: web.Request) -> None:
    """A blocking query: with `index=N`, wait until the registry moves past N (or `wait`)."""
    index_text = request.query.get("index")
    if index_text is None:
        return
    if not index_text.isdigit() or len(index_text) > 18:
        raise BadRequest(f"must be a non-negative integer, got {index_text!r}", field="index")
    wait = WAIT_DEFAULT
    if "wait" in request.query:
        try:
            wait = parse_duration(request.query["wait"], "wait")
        except FieldError as exc:
            raise BadRequest(exc.message, field="wait") from None
    await request.app[REGISTRY].wait(int(index_text), min(wait, WAIT_MAX))


async def list_services(request: web.Request) -> web.Response:
    tags = request.query.getall("tag", [])
    name = request.query.get("name")
    status = parse_status(request)
    with_openapi = parse_bool(request, "openapi")
    await block(request)
    registry = request.app[REGISTRY]
    records = registry.query(tags=tags, name=name, status=status)
    if with_openapi:
        items = [dumps_compact(r.to_json(with_openapi=True)) for r in records]
    else:
        items = [registry.encoded(r) for r in records]
    return raw_json_response(f'{{"index":{registry.index},"services":[{",".join(items)}]}}')


async def list_tags(request: web.Request) -> web.Response:
    await block(request)
    return json_response(request.app[REGISTRY].tag_counts())


async def healthz(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    return json_response({"status": "ok", "services": len(registry), "index": registry.index})


async def metrics(request: web.Request) -> web.Response:
    app_metrics = request.app[METRICS]
    registry = request.app[REGISTRY]
    for status, count in registry.status_counts().items():
        app_metrics.services.labels(status.value).set(count)
    app_metrics.registry_index.set(registry.index)
    return web.Response(body=app_metrics.render(), content_type="text/plain", charset="utf-8")


def add_routes(app: web.Application) -> None:
    app.router.add_put("/v1/services/{id}", put_service)
    app.router.add_delete("/v1/services/{id}", delete_service)
    app.router.add_get("/v1/services", list_services)
    app.router.add_get("/v1/services/{id}", get_service)
    app.router.add_get("/v1/services/{id}/openapi", get_service_openapi)
    app.router.add_get("/v1/tags", list_tags)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
