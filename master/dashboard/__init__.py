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

# The only files served: a name not in this table is a 404, so no path reaches the disk.
FILES: Final = {
    "index.html": "text/html; charset=utf-8",
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


def _serve(name: str) -> web.FileResponse:
    return web.FileResponse(
        HERE / name,
        headers={
            "Content-Type": FILES[name],
            "Cache-Control": CACHE_CONTROL,
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


async def index(request: web.Request) -> web.FileResponse:
    return _serve("index.html")


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in FILES:
        raise NotFound(f"no dashboard file {name!r}")
    return _serve(name)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/dashboard/{name}", asset)
