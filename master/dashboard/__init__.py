"""The dashboard: the list of services at `/`, a page per service at
`/dashboard/services/{id}`, its API docs at `/dashboard/services/{id}/api`.

First paint from the server: where reads are open, the master renders the list and a
service's page as HTML (master.dashboard.render), so they show the registry before any
script runs. Then live: app.js renders the list from `/v1/services` and follows it with
blocking queries; service.js asks the page for its sections again, as a blocking request
(`?fragment=1&index=N`, woken only by changes of that service's name), and swaps in those
that changed. Where reads need a token, the pages come without data (these paths need no
token: a browser cannot send one when it navigates) and the scripts ask for it with the
token the reader gives, which a fragment request checks as the API does.

The API docs are rendered by a pinned copy of Swagger UI shipped in vendor/swagger-ui/
(see its README.md), served from here: no CDN, no internet.

Headers: every file is revalidated by ETag (`no-cache`), so a reload after an upgrade
picks up page and scripts together, while an unchanged one costs a 304. The
Content-Security-Policy allows nothing but this origin: no inline script, no inline style,
no framing; the list and service pages also require Trusted Types, so the one place that
puts HTML into the page (service.js, swapping in sections the master rendered) is the only
one that can. The API docs page has the same policy but for Trusted Types: Swagger UI
writes the document's Markdown (sanitized by its DOMPurify) through innerHTML. It needs no
'unsafe-inline' style: the styles it sets go through the CSSOM, which a policy does not
restrict (tests/test_dashboard.py checks that no violation is reported). An inline event
handler in a hostile document's Markdown is stripped by DOMPurify, and refused by the
policy while Swagger UI parses it.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from master.api import AUTH, REGISTRY, index_of, json_response, wait_of
from master.catalog_apis import CATALOG, ApiCatalog
from master.errors import NotFound
from master.model import Record
from master.registry import Registry

from . import render

HERE: Final = Path(__file__).resolve().parent
VENDOR: Final = HERE / "vendor" / "swagger-ui"
SWAGGER_UI_VERSION: Final = "5.35.0"

# The assets are the names in these tables and nothing else, so no request path ever
# reaches the disk.
ASSETS: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "service.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "shared.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
VENDOR_ASSETS: Final = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
HTML: Final = "text/html; charset=utf-8"
CACHE_CONTROL: Final = "no-cache"
FIRST_PAINT_ROWS: Final = 1000  # rows the server renders; the script renders the rest
FRAGMENT_WAIT_DEFAULT: Final = 20.0
TRUSTED_TYPES_POLICY: Final = "picoapi-fragment"
_BASE_POLICY: Final = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
CONTENT_SECURITY_POLICY: Final = (
    f"{_BASE_POLICY}; require-trusted-types-for 'script'; trusted-types {TRUSTED_TYPES_POLICY}"
)
API_DOCS_POLICY: Final = _BASE_POLICY
_SLOT_RE: Final = re.compile(r"<!--@(\w+)-->")


def _template(name: str) -> str:
    return (HERE / name).read_text(encoding="utf-8")


TEMPLATES: Final = {name: _template(name) for name in ("index.html", "service.html", "api.html")}


def fill(template: str, slots: Mapping[str, str]) -> str:
    """The template with each `<!--@slot-->` replaced, in one pass (so nothing a slot
    holds is ever taken for a slot); a slot not given is left empty."""
    return _SLOT_RE.sub(lambda m: slots.get(m.group(1), ""), template)


def _headers(content_type: str, policy: str = CONTENT_SECURITY_POLICY) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "Cache-Control": CACHE_CONTROL,
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def _page(
    request: web.Request, body: str, status: int = 200, policy: str = CONTENT_SECURITY_POLICY
) -> web.Response:
    data = body.encode()
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    headers = _headers(HTML, policy)
    headers["ETag"] = etag
    if status == 200 and etag in request.headers.get("If-None-Match", ""):
        headers.pop("Content-Type")
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, status=status, headers=headers)


def _file(path: Path, content_type: str) -> web.FileResponse:
    return web.FileResponse(path, headers=_headers(content_type))


def _open(request: web.Request) -> bool:
    """May a page carry data without a token? (Reads are open.)"""
    return not request.app[AUTH].guards("GET")


def _catalog(request: web.Request) -> ApiCatalog:
    return request.app[CATALOG]


# --- the list ----------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    filters = render.Filters(request.query, request.query.getall("tag", []))
    slots = {"q": render.esc(request.query.get("q", "")), "apis_hidden": " hidden"}
    if _open(request):
        slots.update(_list_slots(request, filters))
    else:
        slots["summary"] = render.summary(None, filters)
        slots["empty_hidden"] = " hidden"
    slots["clear_hidden"] = render.hidden_attr(not filters.active)
    return _page(request, fill(TEMPLATES["index.html"], slots))


def _list_slots(request: web.Request, filters: render.Filters) -> dict[str, str]:
    registry = request.app[REGISTRY]
    records = sorted(registry.records(), key=lambda r: (r.name, r.id))
    entries = _catalog(request).entries(registry)
    versions = render.versions_of(entries)
    shown = [r for r in records if filters.matches(r)]
    now = render_now()
    notice = render.apis_notice(entries)
    return {
        "summary": render.summary(records, filters),
        "tags": render.tag_bar(registry.tag_counts(), filters),
        "apis": notice,
        "apis_hidden": render.hidden_attr(not notice),
        "shown": render.shown_text(len(shown), len(records)),
        "rows": "\n".join(render.row(r, filters, versions, now) for r in shown[:FIRST_PAINT_ROWS]),
        "empty_hidden": render.hidden_attr(bool(shown)),
    }


def render_now() -> float:
    return time.time()


# --- a service's page ------------------------------------------------------------------------

SECTIONS: Final = ("overview", "check", "record", "tags", "timeline", "instances", "api")


def sections(registry: Registry, catalog: ApiCatalog, ident: str, now: float) -> dict[str, str]:
    """The page's sections as HTML, by name (only `overview` for an id not registered)."""
    record = registry.get(ident)
    if record is None:
        return {"overview": render.missing(ident)}
    siblings = sorted(registry.query(name=record.name), key=lambda r: r.id)
    entries = catalog.entries(registry, record.name)
    entry = entries[0] if entries else None
    versions = render.versions_of(entries)
    return {
        "overview": render.overview(record, now),
        "check": render.check_section(record),
        "record": render.record_section(record, registry.indexes(record.id)),
        "tags": render.tags_section(record),
        "timeline": render.timeline_section(record.history, now),
        "instances": render.instances_section(record.name, siblings, record.id, versions, now),
        "api": render.api_section(record, entry),
    }


def _section_html(name: str, html: str, key: str = "") -> str:
    keyed = f' data-key="{key}"' if key else ""
    return (
        f'<section class="panel" id="section-{name}" data-section="{name}"{keyed}>{html}</section>'
    )


def _keys(rendered: Callable[[float], dict[str, str]]) -> dict[str, str]:
    """A key per section that moves only when its data does (the time it shows aside: it
    is rendered at one fixed time for the key)."""
    return {
        name: hashlib.sha256(html.encode()).hexdigest()[:16] for name, html in rendered(0.0).items()
    }


async def service_page(request: web.Request) -> web.Response:
    ident = request.match_info["id"]
    if "fragment" in request.query:
        return await _fragment(request, ident)
    registry = request.app[REGISTRY]
    record = registry.get(ident) if _open(request) else None
    if _open(request):
        catalog = _catalog(request)
        parts = sections(registry, catalog, ident, render_now())
        keys = _keys(lambda now: sections(registry, catalog, ident, now))
        page = "".join(_section_html(name, html, keys[name]) for name, html in parts.items())
        title = record.name if record is not None else ident
    else:
        page = _section_html("overview", f'<h1 id="title"><code>{render.esc(ident)}</code></h1>')
        title = ident
    slots = {"id": render.esc(ident), "title": render.esc(title), "page": page}
    missing = _open(request) and record is None
    return _page(request, fill(TEMPLATES["service.html"], slots), 404 if missing else 200)


async def _fragment(request: web.Request, ident: str) -> web.Response:
    """`{"index", "found", "title", "sections": {name: html}, "keys": {name: key}}`;
    `index=N` waits until this service's name changes past N (or `wait`, 20 s unless
    given)."""
    auth = request.app[AUTH]
    if auth.guards("GET"):
        auth.scope("GET", request.headers, request.query)  # 401 without a read token
    registry = request.app[REGISTRY]
    index = index_of(request)
    if index is not None:
        wait = wait_of(request) if "wait" in request.query else FRAGMENT_WAIT_DEFAULT
        held = registry.get(ident)
        if held is not None:
            await registry.wait_name(held.name, index, wait)
        else:
            await registry.wait(index, wait)
    record = registry.get(ident)
    catalog = _catalog(request)

    def rendered(now: float) -> dict[str, str]:
        return sections(registry, catalog, ident, now)

    body: dict[str, Any] = {
        "index": registry.name_index(record.name) if record is not None else registry.index,
        "found": record is not None,
        "title": record.name if record is not None else ident,
        "sections": rendered(render_now()),
        "keys": _keys(rendered),
    }
    return json_response(body)


# --- its API docs ------------------------------------------------------------------------


async def api_page(request: web.Request) -> web.Response:
    ident = request.match_info["id"]
    slots = {
        "id": render.esc(ident),
        "id_url": render.quote(ident),
        "title": render.esc(ident),
        "swagger_version": SWAGGER_UI_VERSION,
    }
    status = 200
    if _open(request):
        registry = request.app[REGISTRY]
        record = registry.get(ident)
        document = registry.document(record.openapi_sha256) if record is not None else None
        slots["head"] = _api_head(request, record, document is not None)
        if record is not None:
            slots["title"] = render.esc(record.name)
        if document is None:
            status = 404
    return _page(request, fill(TEMPLATES["api.html"], slots), status, API_DOCS_POLICY)


def _api_head(request: web.Request, record: Record | None, has_document: bool) -> str:
    if record is None:
        return '<p class="muted" id="api-missing">No service is registered with this id.</p>'
    if not has_document:
        return (
            f'<h1><span class="name">{render.esc(record.name)}</span> '
            f'<code class="id">{render.esc(record.id)}</code></h1>'
            '<p class="muted" id="api-missing">This instance registered no OpenAPI document.</p>'
        )
    entries = _catalog(request).entries(request.app[REGISTRY], record.name)
    document = next(
        (
            d
            for entry in entries
            for d in entry["documents"]
            if d["sha256"] == record.openapi_sha256
        ),
        None,
    )
    title = f"{document['title']} {document['version']}".strip() if document else ""
    raw = f"../../../v1/services/{render.quote(record.id)}/openapi"
    summary = (
        f'<p class="api-summary">{render.esc(entries[0]["summary"])}</p>'
        if entries and len(entries[0]["documents"]) > 1
        else ""
    )
    return (
        f'<h1><span class="name">{render.esc(record.name)}</span> '
        f'<code class="id">{render.esc(record.id)}</code>'
        f"{(' <span class=version>' + render.esc(title) + '</span>') if title else ''}</h1>"
        f'{summary}<p><a class="raw" id="raw-link" href="{raw}">raw document (JSON)</a></p>'
    )


# --- files ---------------------------------------------------------------------------------


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFound(f"no dashboard file {name!r}")
    return _file(HERE / name, content_type)


async def vendor_asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    content_type = VENDOR_ASSETS.get(name)
    if content_type is None:
        raise NotFound(f"no Swagger UI file {name!r}")
    return _file(VENDOR / name, content_type)


def add_routes(app: web.Application) -> None:
    if CATALOG not in app:  # shared with /v1/catalog/apis where that is served too
        app[CATALOG] = ApiCatalog()
    app.router.add_get("/", index)
    app.router.add_get("/dashboard/services/{id}", service_page)
    app.router.add_get("/dashboard/services/{id}/api", api_page)
    app.router.add_get("/dashboard/vendor/swagger-ui/{name}", vendor_asset)
    app.router.add_get("/dashboard/{name}", asset)
