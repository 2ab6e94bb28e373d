"""The dashboard in a real headless Chromium against the master app, in process.

The list must show what is registered from the server's first paint, then follow changes
through blocking queries without a reload, filter by tags (AND), status and name with the
filters in the URL, and reflow into cards at 400 px. A service's page must say since when
and why it has its status, show its timeline, its instances side by side and how their
API documents differ, and follow changes live. Its API docs must render from the master's
own copy of Swagger UI with no network but the master. Hostile service data must render as
text everywhere, and a read token must be asked for once.

Each view is saved as a screenshot under $PICOAPI_ARTIFACTS (default
/tmp/picoapi-artifacts)/dashboard/; `PICOAPI_UPDATE_SCREENSHOTS=1` also rewrites the
README's docs/service-page.png.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from master.app import build_app
from master.auth import Auth
from master.dashboard import ASSETS, SWAGGER_UI_VERSION, VENDOR, VENDOR_ASSETS
from master.shared.tokens import TokenFile
from master.store.memory import MemoryStore
from tests.browser import Browser, find_chromium

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("PICOAPI_ARTIFACTS", "/tmp/picoapi-artifacts")) / "dashboard"
README_SCREENSHOT = ROOT / "docs" / "service-page.png"
HOSTILE = "<img src=x onerror=alert(1)>"
BREAKOUT = '"></code></script><script>alert(2)</script><b>bold</b>'
REFUSED = "http://127.0.0.1:1/health"  # nothing listens on port 1: a critical check
OPENAPI = {"openapi": "3.0.3", "info": {"title": "crawler", "version": "1"}, "paths": {}}


def items_document(version: str, *, delete: bool, limit_required: bool) -> dict[str, Any]:
    """An items API; 1.5.0 drops DELETE /items and makes `limit` required."""
    ok = {"200": {"description": "ok"}}
    limit = {
        "name": "limit",
        "in": "query",
        "required": limit_required,
        "schema": {"type": "integer"},
    }
    items: dict[str, Any] = {
        "get": {"summary": "List the items", "parameters": [limit], "responses": ok}
    }
    if delete:
        items["delete"] = {"summary": "Delete every item", "responses": ok}
    return {
        "openapi": "3.0.3",
        "info": {"title": "items", "version": version},
        "paths": {
            "/items": items,
            "/items/{id}": {
                "get": {
                    "summary": "One item",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": ok,
                }
            },
        },
    }


OLD_ITEMS = items_document("1.4.2", delete=True, limit_required=False)
NEW_ITEMS = items_document("1.5.0", delete=False, limit_required=True)

ROWS = "[...document.querySelectorAll('#services tbody tr')]"
NAMES = f"{ROWS}.map(r => r.querySelector('.name').textContent)"
STATUSES = f"{ROWS}.map(r => r.querySelector('.status').textContent)"
LIVE = "document.getElementById('connection').dataset.state === 'live'"
HEADLINE = "document.querySelector('#headline .sentence')?.textContent"
TIMELINE = (
    "[...document.querySelectorAll('#timeline li')]"
    ".map(li => [...li.querySelectorAll('.change .status')].map(s => s.textContent).join('>'))"
)
NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
# Without the page's own (hostile markup would add elements or run script):
INJECTED = (
    "({img: document.querySelectorAll('img, b, iframe, object').length,"
    " scripts: [...document.scripts].map(s => s.getAttribute('src') || 'inline'),"
    " handlers: [...document.querySelectorAll('*')].filter("
    "   e => [...e.attributes].some(a => a.name.startsWith('on'))).length,"
    " alerted: !!window.alerted})"
)


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """An app on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def master() -> AsyncIterator[str]:
    async with serving(build_app(MemoryStore(), Auth(None, None))) as url:
        yield url


class Target:
    """Health endpoints to check, whose answers a test may change: /{name} answers
    `answers[name]` (status, text)."""

    def __init__(self, url: str, answers: dict[str, tuple[int, str]]) -> None:
        self.url = url
        self.answers = answers

    def __call__(self, name: str) -> str:
        return f"{self.url}/{name}"


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    answers = {
        "ok": (200, "ok"),
        "busy": (429, "slow down"),
        "hostile": (200, HOSTILE + BREAKOUT),
        "flip": (200, "ok"),
    }

    async def health(request: web.Request) -> web.Response:
        status, text = answers[request.match_info["name"]]
        return web.Response(status=status, text=text)

    app = web.Application()
    app.router.add_get("/{name}", health)
    async with serving(app) as url:
        yield Target(url, answers)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = find_chromium()
    if executable is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    browser = await Browser.launch(executable)
    await browser.send("Log.enable")
    try:
        yield browser
    finally:
        await browser.close()


async def register(
    master: str,
    ident: str,
    name: str,
    tags: list[str],
    check: str | None = None,
    interval: str = "1s",
    **fields: Any,
) -> None:
    body = {"name": name, "address": "10.0.0.5", "port": 8080, "tags": tags, **fields}
    if check is not None:
        body["check"] = {"url": check, "interval": interval, "timeout": "500ms"}
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{master}/v1/services/{ident}", json=body) as answer,
    ):
        assert answer.status == 200, await answer.text()


async def deregister(master: str, ident: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"{master}/v1/services/{ident}") as answer,
    ):
        assert answer.status == 200, await answer.text()


async def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        assert answer.status == 200, (url, answer.status, await answer.text())
        return await answer.json()


async def settled(master: str, ident: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    """The record once the master's checks gave it `status`."""
    deadline = time.monotonic() + timeout
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        record = await get_json(f"{master}/v1/services/{ident}")
        if record["status"] == status:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"{ident} not {status} within {timeout}s: {record.get('status')}")


def no_page_errors(browser: Browser) -> None:
    thrown = browser.events_named("Runtime.exceptionThrown")
    dialogs = browser.events_named("Page.javascriptDialogOpening")
    assert not thrown, thrown
    assert not dialogs, dialogs


def policy_violations(browser: Browser) -> list[str]:
    return [
        e["params"]["entry"]["text"]
        for e in browser.events_named("Log.entryAdded")
        if e["params"]["entry"]["source"] == "security"
    ]


def row(ident: str) -> str:
    return f"document.querySelector('tr[data-id={json.dumps(ident)}]')"


def chips(ident: str) -> str:
    return f"[...{row(ident)}.querySelectorAll('.tag')].map(c => c.textContent)"


def click_tag(tag: str) -> str:
    """JS that clicks a chip of the tag bar (its first text node is the tag itself)."""
    return (
        "[...document.querySelectorAll('#tags .tag')]"
        f".find(b => b.firstChild.textContent === {json.dumps(tag)}).click()"
    )


def type_search(text: str) -> str:
    """JS that types into the name box as a user would (the page listens to `input`)."""
    return (
        "{ const box = document.getElementById('search');"
        f"box.value = {json.dumps(text)}; box.dispatchEvent(new Event('input')) }}"
    )


def texts_of(selector: str) -> str:
    """JS: the text of each element matching `selector`, whitespace collapsed, with what
    depends on the moment left out (ticking durations, times in the reader's zone)."""
    return (
        f"[...document.querySelectorAll({json.dumps(selector)})].map(node => {{"
        " const copy = node.cloneNode(true);"
        " copy.querySelectorAll('.since, time').forEach(n => n.remove());"
        " return copy.textContent.replace(/\\s+/g, ' ').trim() })"
    )


async def shoot(browser: Browser, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    await browser.screenshot(path, full_page=True)
    return path


# --- the list --------------------------------------------------------------------------


async def test_lists_services_and_follows_changes_without_reload(
    master: str, target: Target, browser: Browser
) -> None:
    crawler_tags = ["web_crawler", "examplehost.com", "dirty"]
    await register(
        master, "web-crawler-1", "web-crawler", crawler_tags, target("ok"), openapi=OPENAPI
    )
    await register(master, "billing-1", "billing", ["payments", "prod"], target("busy"))
    await register(master, "search-1", "search", ["prod", "search"], REFUSED)

    await browser.navigate(f"{master}/")
    await browser.wait_for(NAMES, ["billing", "search", "web-crawler"])
    assert await browser.evaluate(chips("web-crawler-1")) == crawler_tags
    link = f"{row('web-crawler-1')}.querySelector('a.raw').pathname"
    assert await browser.evaluate(link) == "/v1/services/web-crawler-1/openapi"
    docs = f"{row('web-crawler-1')}.querySelector('a.openapi')"
    assert await browser.evaluate(f"{docs}.pathname") == "/dashboard/services/web-crawler-1/api"
    await browser.wait_for(f"{docs}.textContent", "1")  # its info.version
    assert await browser.evaluate("document.querySelectorAll('a.openapi').length") == 1
    page = f"{row('web-crawler-1')}.querySelector('a.name').pathname"
    assert await browser.evaluate(page) == "/dashboard/services/web-crawler-1"

    # A blocking query is waiting: a new service shows up in this same document, at once.
    await browser.wait_for(LIVE)
    await browser.evaluate("window.sameDocument = true")
    started = time.monotonic()
    await register(master, "mailer-1", "mailer", ["prod"])
    await browser.wait_for(NAMES, ["billing", "mailer", "search", "web-crawler"], timeout=3.0)
    assert time.monotonic() - started < 3.0
    assert await browser.evaluate("window.sameDocument") is True

    # Check results arrive the same way, with the status, since when and why.
    await browser.wait_for(STATUSES, ["warning", "passing", "critical", "passing"])
    counts = "[...document.querySelectorAll('.summary .count')].map(c => c.textContent)"
    assert await browser.evaluate(counts) == ["4", "2", "1", "1", "0", "0"]
    reason = f"{row('billing-1')}.querySelector('.reason').textContent"
    assert await browser.evaluate(reason) == "slow down"
    refused = f"{row('search-1')}.querySelector('.reason').textContent"
    assert await browser.evaluate(refused) == "connection refused by 127.0.0.1:1"
    since = f"{row('search-1')}.querySelector('.since').textContent"
    assert re.fullmatch(r"for \d+ s", await browser.evaluate(since))

    # Tags filter with AND; the name box and the status narrow further; all in the URL.
    await browser.evaluate(click_tag("prod"))
    assert await browser.evaluate(NAMES) == ["billing", "mailer", "search"]
    await browser.evaluate(click_tag("payments"))
    assert await browser.evaluate(NAMES) == ["billing"]
    assert await browser.evaluate("location.search") == "?tag=prod&tag=payments"
    await browser.evaluate("document.getElementById('clear-filters').click()")
    await browser.evaluate(type_search("CRAWL"))
    assert await browser.evaluate(NAMES) == ["web-crawler"]
    assert await browser.evaluate("location.search") == "?q=CRAWL"
    await browser.evaluate(type_search(""))
    await browser.evaluate("document.querySelector('.stat[data-status=critical]').click()")
    assert await browser.evaluate(NAMES) == ["search"]
    assert await browser.evaluate("location.search") == "?status=critical"
    await browser.evaluate("document.querySelector('.stat[data-status=critical]').click()")
    assert await browser.evaluate("location.search") == ""

    await deregister(master, "mailer-1")
    await browser.wait_for(NAMES, ["billing", "search", "web-crawler"], timeout=3.0)
    await register(master, "mailer-1", "mailer", ["prod", "smtp"], REFUSED, interval="1h")
    await browser.wait_for(chips("mailer-1"), ["prod", "smtp"], timeout=3.0)
    assert await browser.evaluate(f"{row('mailer-1')}.querySelector('.status').textContent") == (
        "unknown"
    )
    assert await browser.evaluate("window.sameDocument") is True
    await shoot(browser, "list-1280")
    no_page_errors(browser)
    assert policy_violations(browser) == []


async def test_the_server_paints_first_and_the_script_renders_the_same(
    master: str, target: Target, browser: Browser
) -> None:
    # Checked once, soon after registering, then not for an hour: both renderings see the
    # same check results.
    await register(master, "billing-1", "billing", ["payments", "prod"], target("busy"), "1h")
    await register(master, "search-1", "search", ["prod", "search"], REFUSED, "1h")
    await register(master, "web-1", "web", ["web"], target("ok"), "1h", openapi=OLD_ITEMS)
    for ident, status in (("billing-1", "warning"), ("search-1", "critical"), ("web-1", "passing")):
        await settled(master, ident, status)

    # No script at all: the filters of the URL, applied by the master.
    await browser.scripts(False)
    await browser.navigate(f"{master}/?tag=prod&q=-1")
    await browser.wait_for(NAMES, ["billing", "search"])
    painted = await browser.evaluate(texts_of("#services tbody tr"))
    assert await browser.evaluate(STATUSES) == ["warning", "critical"]
    refused = f"{row('search-1')}.querySelector('.reason').textContent"
    assert await browser.evaluate(refused) == "connection refused by 127.0.0.1:1"
    since = f"{row('search-1')}.querySelector('.since').textContent"
    assert re.fullmatch(r"for \d+ s", await browser.evaluate(since))
    assert await browser.evaluate("document.getElementById('search').value") == "-1"
    pressed = "[...document.querySelectorAll('#tags [aria-pressed=true]')].map(b => b.dataset.tag)"
    assert await browser.evaluate(pressed) == ["prod"]
    assert await browser.evaluate("document.getElementById('shown').textContent") == "2 of 3 shown"

    # With the script: the same rows, word for word, once it has taken over.
    await browser.scripts(True)
    await browser.navigate(f"{master}/?tag=prod&q=-1")
    await browser.wait_for(LIVE)
    assert await browser.evaluate(texts_of("#services tbody tr")) == painted
    assert await browser.evaluate(pressed) == ["prod"]
    no_page_errors(browser)


# --- a service's page ------------------------------------------------------------------


async def test_service_page_says_since_when_and_why(
    master: str, target: Target, browser: Browser
) -> None:
    await register(master, "search-1", "search", ["prod"], REFUSED, meta={"team": "search"})
    await settled(master, "search-1", "critical")
    await browser.navigate(f"{master}/dashboard/services/search-1")
    sentence = await browser.wait_for(HEADLINE)
    assert re.fullmatch(r"critical for \d+ s: connection refused by 127\.0\.0\.1:1", sentence)
    await browser.wait_for(LIVE)
    first = int(re.findall(r"\d+", sentence)[0])
    await browser.wait_for(  # it ticks
        f"parseInt({HEADLINE}.match(/for (\\d+) s/)[1]) > {first}", timeout=3.0
    )
    assert await browser.evaluate("document.title") == "search · picoapi registry"
    meta = "[...document.querySelectorAll('.meta dt, .meta dd')].map(n => n.textContent)"
    assert await browser.evaluate(meta) == ["team", "search"]
    output = "document.querySelector('.check-output').textContent"
    assert await browser.evaluate(output) == "connection refused by 127.0.0.1:1"
    no_page_errors(browser)


async def test_a_status_change_shows_without_reload_and_the_timeline_grows(
    master: str, target: Target, browser: Browser
) -> None:
    await register(master, "db-1", "db", ["prod"], target("flip"))
    await register(master, "db-2", "db", ["prod"], target("ok"))
    await settled(master, "db-1", "passing")  # 1: unknown -> passing
    await browser.navigate(f"{master}/dashboard/services/db-1")
    await browser.wait_for(LIVE)
    assert re.fullmatch(r"passing for \d+ s: ok", await browser.wait_for(HEADLINE))
    await browser.evaluate("window.sameDocument = true")

    target.answers["flip"] = (503, "database down")  # 2: passing -> critical
    started = time.monotonic()
    await browser.wait_for(f"/^critical for \\d+ s: database down$/.test({HEADLINE})", timeout=5.0)
    assert time.monotonic() - started < 5.0
    target.answers["flip"] = (200, "ok")  # 3: critical -> passing
    await browser.wait_for(f"/^passing for \\d+ s: ok$/.test({HEADLINE})", timeout=5.0)

    await browser.wait_for(
        TIMELINE, ["critical>passing", "passing>critical", "unknown>passing"], timeout=3.0
    )
    outputs = "[...document.querySelectorAll('#timeline .output')].map(o => o.textContent)"
    assert await browser.evaluate(outputs) == ["ok", "database down", "ok"]
    assert await browser.evaluate("document.querySelectorAll('.strip rect').length") == 3
    history = (await get_json(f"{master}/v1/services/db-1/history"))["history"]
    assert [(h["from"], h["to"]) for h in history] == [
        ("unknown", "passing"), ("passing", "critical"), ("critical", "passing"),
    ]  # fmt: skip
    instances = "[...document.querySelectorAll('#instances .instance')].map(i => i.dataset.id)"
    assert await browser.evaluate(instances) == ["db-1", "db-2"]
    current = "document.querySelector('#instances [aria-current=page]').dataset.id"
    assert await browser.evaluate(current) == "db-1"
    assert await browser.evaluate("window.sameDocument") is True
    await shoot(browser, "service-timeline-1280")
    no_page_errors(browser)
    assert policy_violations(browser) == []


async def test_service_page_of_an_id_not_registered_waits_for_it(
    master: str, browser: Browser
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{master}/dashboard/services/later-1") as answer,
    ):
        assert answer.status == 404
        assert answer.content_type == "text/html"
    await browser.navigate(f"{master}/dashboard/services/later-1")
    await browser.wait_for(LIVE)
    headline = "document.getElementById('headline').textContent"
    assert "not registered" in await browser.evaluate(headline)
    await register(master, "later-1", "later", ["new"])
    await browser.wait_for(f"/^passing for \\d+ s/.test({HEADLINE})", timeout=3.0)
    no_page_errors(browser)


# --- the API catalog and the API docs ----------------------------------------------------


async def register_items(master: str, target: Target) -> None:
    """Five instances of `items`: two on 1.5.0, three on 1.4.2 (a rollout half done)."""
    for i in range(5):
        await register(
            master,
            f"items-{i}",
            "items",
            ["prod", "api"],
            target("ok"),
            port=8080 + i,
            meta={"team": "storage", "version": "1.5.0" if i < 2 else "1.4.2"},
            openapi=NEW_ITEMS if i < 2 else OLD_ITEMS,
        )


async def test_service_page_shows_how_the_instances_apis_differ(
    master: str, target: Target, browser: Browser
) -> None:
    await register_items(master, target)
    await browser.navigate(f"{master}/dashboard/services/items-3")
    await browser.wait_for(LIVE)
    expected = (
        "2 of 5 instances on 1.5.0; 2 breaking changes: DELETE /items removed, "
        "GET /items: query parameter 'limit' now required"
    )
    summary = "document.getElementById('api-summary').textContent"
    assert await browser.evaluate(summary) == expected
    changes = "[...document.querySelectorAll('.changes .change')].map(c => c.textContent)"
    assert await browser.evaluate(changes) == [
        "breaking DELETE /items removed",
        "breaking GET /items: query parameter 'limit' now required",
    ]
    served = "[...document.querySelectorAll('#documents li')].map(li => li.textContent)"
    assert await browser.evaluate(served) == [
        "1.5.0 items on items-0, items-1",
        "1.4.2 items on items-2, items-3, items-4",
    ]
    versions = "[...document.querySelectorAll('#instances .version')].map(v => v.textContent)"
    assert await browser.evaluate(versions) == ["API 1.5.0"] * 2 + ["API 1.4.2"] * 3

    # The list says it too, and names each row's version.
    await browser.navigate(f"{master}/")
    await browser.wait_for(LIVE)
    notice = "document.querySelector('#apis .api-summary')?.textContent"
    assert await browser.evaluate(notice) == expected
    labels = f"{ROWS}.map(r => r.querySelector('.openapi').textContent)"
    assert await browser.evaluate(labels) == ["1.5.0"] * 2 + ["1.4.2"] * 3

    # Rolling on: the last instances move to 1.5.0, the page follows by itself.
    await browser.navigate(f"{master}/dashboard/services/items-3")
    await browser.wait_for(LIVE)
    for i in (2, 3, 4):
        await register(
            master, f"items-{i}", "items", ["prod", "api"], target("ok"), port=8080 + i,
            meta={"team": "storage", "version": "1.5.0"}, openapi=NEW_ITEMS,
        )  # fmt: skip
    await browser.wait_for(summary, "all 5 instances on 1.5.0", timeout=3.0)
    no_page_errors(browser)


async def test_api_docs_render_from_the_packaged_swagger_ui_offline(
    master: str, target: Target, browser: Browser
) -> None:
    await register_items(master, target)
    await browser.offline_except(master)
    await browser.navigate(f"{master}/dashboard/services/items-0/api")
    paths = "[...document.querySelectorAll('.opblock-summary-path')].map(p => p.textContent)"
    await browser.wait_for(paths, ["/items", "/items/{id}"])
    methods = "[...document.querySelectorAll('.opblock-summary-method')].map(m => m.textContent)"
    assert await browser.evaluate(methods) == ["GET", "GET"]
    title = "document.querySelector('.swagger-ui .info .title').textContent"
    assert (await browser.evaluate(title)).startswith("items")
    assert await browser.evaluate("document.querySelectorAll('.try-out__btn').length") == 0
    sheets = "[...document.styleSheets].map(s => new URL(s.href).pathname)"
    assert await browser.evaluate(sheets) == [
        "/dashboard/vendor/swagger-ui/swagger-ui.css",
        "/dashboard/style.css",
    ]
    # Swagger UI's own stylesheet is in force: the operation is laid out as a block.
    radius = "getComputedStyle(document.querySelector('.swagger-ui .opblock')).borderRadius"
    assert await browser.evaluate(radius) == "4px"
    # An operation opens (its details render) with no network but the master.
    await browser.evaluate("document.querySelector('button.opblock-summary-control').click()")
    await browser.wait_for("document.querySelectorAll('.opblock-body .parameters').length > 0")
    raw = await browser.evaluate("document.getElementById('raw-link').href")
    assert raw == f"{master}/v1/services/items-0/openapi"
    assert await get_json(raw) == NEW_ITEMS
    assert browser.refused == []  # it did not even try to reach elsewhere
    assert policy_violations(browser) == []
    await shoot(browser, "api-1280")
    no_page_errors(browser)


# --- every size --------------------------------------------------------------------------


async def test_every_page_fits_400_px_without_sideways_scrolling(
    master: str, target: Target, browser: Browser
) -> None:
    await register_items(master, target)
    long_id = "mailer-" + "x" * 100
    await register(master, long_id, "mailer", ["smtp", "y" * 120], target("hostile"))
    await register(master, "search-1", "search", ["prod"], REFUSED, address="fd00::1234:5678")
    await settled(master, "search-1", "critical")
    await browser.viewport(400)
    for name, path in (
        ("list", "/"),
        ("service", "/dashboard/services/items-3"),
        ("service-long", f"/dashboard/services/{long_id}"),
        ("api", "/dashboard/services/items-0/api"),
    ):
        await browser.navigate(f"{master}{path}")
        if name == "api":
            await browser.wait_for("document.querySelectorAll('.opblock').length === 2")
        else:
            await browser.wait_for(LIVE)
        assert await browser.evaluate(NO_SIDEWAYS_SCROLL), name
        await shoot(browser, f"{name}-400")
    await browser.navigate(f"{master}/")
    await browser.wait_for(LIVE)
    # Cards, not a table: each service is a block of the page's width, labelled.
    widths = f"{ROWS}.map(r => [getComputedStyle(r).display, r.getBoundingClientRect().right])"
    assert all(
        display == "block" and right <= 400 for display, right in await browser.evaluate(widths)
    )
    label = f"getComputedStyle({ROWS}[0].cells[2], '::before').content"
    assert await browser.evaluate(label) == '"Address"'
    # Keyboard: the first Tab reaches the skip link, which leads to the services.
    await browser.send("Input.dispatchKeyEvent", type="keyDown", key="Tab", code="Tab")
    await browser.send("Input.dispatchKeyEvent", type="keyUp", key="Tab", code="Tab")
    assert await browser.evaluate("document.activeElement.className") == "skip"
    await browser.viewport(1280)
    await browser.navigate(f"{master}/dashboard/services/items-3")
    await browser.wait_for(LIVE)
    await shoot(browser, "service-1280")
    no_page_errors(browser)


# --- hostile data ------------------------------------------------------------------------


async def test_hostile_registration_is_text_on_every_page(
    master: str, target: Target, browser: Browser
) -> None:
    # Names and ids are restricted by the API; tags, meta, addresses, check output and the
    # OpenAPI document are free text.
    tags = [HOSTILE, BREAKOUT]
    meta = {HOSTILE: BREAKOUT, "x": "</script><script>window.alerted=1</script>"}
    document = {
        "openapi": "3.0.3",
        "info": {"title": HOSTILE, "version": BREAKOUT, "description": HOSTILE + BREAKOUT},
        "paths": {
            "/x": {
                "get": {
                    "summary": HOSTILE,
                    "parameters": [{"name": BREAKOUT, "in": "query", "required": True}],
                    "responses": {"200": {"description": HOSTILE}},
                }
            }
        },
    }
    await register(master, "evil-1", "evil", tags, target("hostile"), address="<script>x",
                   meta=meta, openapi=document)  # fmt: skip
    await register(master, "evil-2", "evil", tags, target("hostile"), address="<b>y",
                   openapi={**document, "paths": {}})  # fmt: skip
    await settled(master, "evil-1", "passing")
    await settled(master, "evil-2", "passing")
    output = HOSTILE + BREAKOUT

    for scripts in (False, True):  # the server's paint, then the scripts' rendering
        await browser.scripts(scripts)
        await browser.navigate(f"{master}/")
        await browser.wait_for(chips("evil-1"), tags)
        if scripts:
            await browser.wait_for(LIVE)
        address = f"{row('evil-1')}.querySelector('.address').textContent"
        assert await browser.evaluate(address) == "<script>x:8080"
        assert await browser.evaluate(f"{row('evil-1')}.querySelector('.reason').textContent") == (
            output
        )
        assert await browser.evaluate(INJECTED) == {
            "img": 0,
            "scripts": ["dashboard/shared.js", "dashboard/app.js"],
            "handlers": 0,
            "alerted": False,
        }, scripts
        await browser.evaluate(click_tag(HOSTILE)) if scripts else None

        await browser.navigate(f"{master}/dashboard/services/evil-1")
        await browser.wait_for("!!document.querySelector('.check-output')")
        if scripts:
            await browser.wait_for(LIVE)
        assert await browser.evaluate("document.querySelector('.check-output').textContent") == (
            output
        )
        page_tags = "[...document.querySelectorAll('#tag-list .tag')].map(t => t.textContent)"
        assert await browser.evaluate(page_tags) == tags
        meta_text = "[...document.querySelectorAll('.meta dt, .meta dd')].map(n => n.textContent)"
        assert await browser.evaluate(meta_text) == [HOSTILE, BREAKOUT, "x", meta["x"]]
        summary = "document.getElementById('api-summary').textContent"
        assert BREAKOUT in await browser.evaluate(summary)
        assert await browser.evaluate(INJECTED) == {
            "img": 0,
            "scripts": ["../shared.js", "../service.js"],
            "handlers": 0,
            "alerted": False,
        }, scripts

    # An id in the URL that is no id at all is shown as text too.
    for path in ("", "/api"):
        await browser.navigate(f"{master}/dashboard/services/{HOSTILE}{path}")
        await browser.wait_for("document.readyState === 'complete'")
        assert await browser.evaluate("document.querySelectorAll('img, b').length") == 0
        assert await browser.evaluate("window.alerted") is None

    # Swagger UI gets the hostile document as data; DOMPurify and the policy do the rest.
    await browser.navigate(f"{master}/dashboard/services/evil-1/api")
    await browser.wait_for("document.querySelectorAll('.opblock').length === 1")
    await asyncio.sleep(0.5)
    found = await browser.evaluate(INJECTED)
    assert found["handlers"] == 0 and found["alerted"] is False
    assert found["scripts"] == [
        "../../shared.js",
        "../../vendor/swagger-ui/swagger-ui-bundle.js",
        "../../api.js",
    ]
    head = "document.querySelector('#api-head h1').textContent"
    assert HOSTILE in await browser.evaluate(head)
    await shoot(browser, "hostile-api-1280")
    no_page_errors(browser)


# --- tokens ------------------------------------------------------------------------------


async def test_asks_once_for_a_read_token(tmp_path: Path, target: Target, browser: Browser) -> None:
    tokens = tmp_path / "read-tokens"
    tokens.write_text("s3cret\n")
    async with serving(build_app(MemoryStore(), Auth(None, TokenFile(tokens)))) as url:
        await register(url, "web-1", "web", ["prod", "secret-tag"], openapi=NEW_ITEMS)
        async with aiohttp.ClientSession() as session:
            for path in (
                "/",
                "/dashboard/app.js",
                "/dashboard/style.css",
                "/dashboard/services/web-1",
                "/dashboard/services/web-1/api",
                "/dashboard/vendor/swagger-ui/swagger-ui-bundle.js",
            ):
                async with session.get(f"{url}{path}") as answer:
                    assert answer.status == 200, f"{path} must load without a token"
                    assert b"secret-tag" not in await answer.read(), f"{path} holds data"
            fragment = f"{url}/dashboard/services/web-1?fragment=1"
            async with session.get(fragment) as answer:
                assert answer.status == 401
            async with session.get(fragment, headers={"Authorization": "Bearer s3cret"}) as a:
                assert a.status == 200
                assert "secret-tag" in (await a.json())["sections"]["tags"]
        await browser.navigate(f"{url}/")
        await browser.wait_for("!document.getElementById('token-form').hidden")
        submit = (
            "document.getElementById('token-input').value = {token};"
            "document.getElementById('token-form').requestSubmit()"
        )
        await browser.evaluate(submit.format(token=json.dumps("wrong")))
        await browser.wait_for(
            "document.getElementById('token-error').textContent", "That token was refused."
        )
        await browser.evaluate(submit.format(token=json.dumps("s3cret")))
        await browser.wait_for(NAMES, ["web"])
        assert await browser.evaluate("sessionStorage.getItem('picoapi.readToken')") == "s3cret"
        await browser.navigate(f"{url}/")  # a reload keeps the token for this tab
        await browser.wait_for(NAMES, ["web"])
        assert await browser.evaluate("document.getElementById('token-form').hidden") is True
        # The service's page and its API docs read with the same token.
        await browser.navigate(f"{url}/dashboard/services/web-1")
        await browser.wait_for(HEADLINE)
        assert await browser.evaluate("document.getElementById('token-form').hidden") is True
        await browser.navigate(f"{url}/dashboard/services/web-1/api")
        await browser.wait_for("document.querySelectorAll('.opblock').length === 2")
        assert await browser.evaluate("document.querySelector('#api-head .name').textContent") == (
            "web"
        )
    no_page_errors(browser)


# --- the README's picture ----------------------------------------------------------------


async def test_service_page_screenshot_for_the_readme(
    master: str, target: Target, browser: Browser
) -> None:
    """A service in a rollout with a short story: the picture the README shows."""
    await register_items(master, target)
    await register(master, "items-5", "items", ["prod", "api"], target("flip"), port=8085,
                   meta={"team": "storage", "version": "1.4.2"}, openapi=OLD_ITEMS)  # fmt: skip
    await settled(master, "items-5", "passing")
    target.answers["flip"] = (503, "database connection refused: 10.0.0.9:5432")
    await settled(master, "items-5", "critical")
    target.answers["flip"] = (200, "ok")
    await settled(master, "items-5", "passing")
    target.answers["flip"] = (503, "database connection refused: 10.0.0.9:5432")
    await settled(master, "items-5", "critical")
    update = os.environ.get("PICOAPI_UPDATE_SCREENSHOTS") == "1"
    if update:
        await asyncio.sleep(4)  # a story a few seconds long reads better
    await browser.viewport(1100)
    await browser.navigate(f"{master}/dashboard/services/items-5")
    await browser.wait_for(LIVE)
    assert await browser.evaluate(NO_SIDEWAYS_SCROLL)
    shot = await shoot(browser, "service-readme")
    if update:
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        README_SCREENSHOT.write_bytes(shot.read_bytes())
    no_page_errors(browser)


# --- the files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html"),
        ("/dashboard/services/web-1", "text/html"),
        ("/dashboard/services/web-1/api", "text/html"),
        *((f"/dashboard/{name}", kind.split(";")[0]) for name, kind in ASSETS.items()),
        *(
            (f"/dashboard/vendor/swagger-ui/{name}", kind.split(";")[0])
            for name, kind in VENDOR_ASSETS.items()
        ),
    ],
)
async def test_serves_files_with_types_and_revalidation(
    master: str, path: str, content_type: str
) -> None:
    await register(master, "web-1", "web", ["prod"], openapi=OPENAPI)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{master}{path}") as answer:
            assert answer.status == 200
            assert answer.content_type == content_type
            assert answer.charset == "utf-8"
            assert answer.headers["Cache-Control"] == "no-cache"
            policy = answer.headers["Content-Security-Policy"]
            assert "default-src 'self'" in policy
            assert "unsafe" not in policy
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            etag = answer.headers["ETag"]
        async with session.get(f"{master}{path}", headers={"If-None-Match": etag}) as answer:
            assert answer.status == 304


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/nope.js",
        "/dashboard/__init__.py",
        "/dashboard/render.py",
        "/dashboard/",
        "/dashboard/index.html",
        "/dashboard/service.html",
        "/dashboard/vendor/swagger-ui/LICENSE",
        "/dashboard/vendor/swagger-ui/README.md",
        "/dashboard/vendor/swagger-ui/..%2F__init__.py",
        "/dashboard/vendor/swagger-ui/swagger-ui.css.map",
    ],
)
async def test_only_the_dashboard_files_are_served(master: str, path: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{master}{path}") as answer:
        assert answer.status == 404
        assert (await answer.json())["error"]["code"] == "not_found"


def test_the_vendored_swagger_ui_is_the_pinned_release() -> None:
    """Each shipped file has the sha256 its README lists, the README names the version the
    page says, and the package ships the folder."""
    readme = (VENDOR / "README.md").read_text()
    listed = dict(re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", readme, re.MULTILINE))
    shipped = {p.name for p in VENDOR.iterdir() if p.name != "README.md"}
    assert set(listed) == shipped
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert f"`swagger-ui-dist` {SWAGGER_UI_VERSION} from the npm registry" in readme
    assert set(VENDOR_ASSETS) <= shipped and "LICENSE" in shipped
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"]["master"]
    for wanted in ("dashboard/*.html", "dashboard/*.js", "dashboard/*.css",
                   "dashboard/vendor/swagger-ui/*"):  # fmt: skip
        assert wanted in patterns, wanted
