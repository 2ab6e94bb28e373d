"""The dashboard: one static page that reads the public API and follows it live.

The page holds no data. It fetches /v1/services and /v1/tags itself and then watches them
with blocking queries, so serving it needs nothing from the registry. Every load
revalidates the files by ETag (`no-cache`), so a reload after an upgrade picks up the new
page and script together, while an unchanged file costs a 304.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

from master.errors import NotFound

HERE: Final = Path(__file__).resolve().parent

# The page is served at / only: it names its assets relative to itself. The assets are the
# names in this table and nothing else, so no request path ever reaches the disk.
PAGE: Final = "index.html"
ASSETS: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CACHE_CONTROL: Final = "no-cache"
# Defense in depth behind the page's textContent-only rendering: no inline script or
# style, nothing loaded from elsewhere, no framing.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


def _serve(name: str, content_type: str) -> web.FileResponse:
    return web.FileResponse(
        HERE / name,
        headers={
            "Content-Type": content_type,
            "Cache-Control": CACHE_CONTROL,
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


async def index(request: web.Request) -> web.FileResponse:
    return _serve(PAGE, "text/html; charset=utf-8")


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFound(f"no dashboard file {name!r}")
    return _serve(name, content_type)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/dashboard/{name}", asset)
