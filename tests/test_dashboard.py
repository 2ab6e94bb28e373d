"""The dashboard in a real headless Chromium against the master app, in process.

The page must list what is registered, follow changes through blocking queries without a
reload, filter by tags (AND) and name, render hostile service data as text, and ask once
for a read token when the master wants one.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from master.app import build_app
from master.auth import Auth
from master.shared.tokens import TokenFile
from master.store.memory import MemoryStore
from tests.browser import Browser, find_chromium

SCREENSHOT = Path("/tmp/dashboard.png")
HOSTILE = "<img src=x onerror=alert(1)>"
OPENAPI = {"openapi": "3.0.3", "info": {"title": "crawler", "version": "1"}, "paths": {}}
REFUSED = "http://127.0.0.1:1/health"  # nothing listens on port 1: a critical check

ROWS = "[...document.querySelectorAll('#services tbody tr')]"
NAMES = f"{ROWS}.map(r => r.querySelector('.name').textContent)"


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


@pytest.fixture
async def target() -> AsyncIterator[str]:
    """Health endpoints to check: /ok answers 200, /busy 429, /hostile 200 with markup."""
    answers = {"ok": (200, "ok"), "busy": (429, "slow down"), "hostile": (200, HOSTILE)}

    async def health(request: web.Request) -> web.Response:
        status, text = answers[request.match_info["name"]]
        return web.Response(status=status, text=text)

    app = web.Application()
    app.router.add_get("/{name}", health)
    async with serving(app) as url:
        yield url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = find_chromium()
    if executable is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    browser = await Browser.launch(executable)
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


def no_page_errors(browser: Browser) -> None:
    thrown = browser.events_named("Runtime.exceptionThrown")
    dialogs = browser.events_named("Page.javascriptDialogOpening")
    assert not thrown, thrown
    assert not dialogs, dialogs


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


async def test_lists_services_and_follows_changes_without_reload(
    master: str, target: str, browser: Browser
) -> None:
    crawler_tags = ["web_crawler", "examplehost.com", "dirty"]
    await register(
        master, "web-crawler-1", "web-crawler", crawler_tags, f"{target}/ok", openapi=OPENAPI
    )
    await register(master, "billing-1", "billing", ["payments", "prod"], f"{target}/busy")
    await register(master, "search-1", "search", ["prod", "search"], REFUSED)

    await browser.navigate(f"{master}/")
    await browser.wait_for(NAMES, ["billing", "search", "web-crawler"])
    assert await browser.evaluate(chips("web-crawler-1")) == crawler_tags
    link = f"{row('web-crawler-1')}.querySelector('a.openapi').pathname"
    assert await browser.evaluate(link) == "/v1/services/web-crawler-1/openapi"
    assert await browser.evaluate("document.querySelectorAll('a.openapi').length") == 1

    # A blocking query is waiting: a new service shows up in this same document, at once.
    await browser.evaluate("window.sameDocument = true")
    started = time.monotonic()
    await register(master, "mailer-1", "mailer", ["prod"])
    await browser.wait_for(NAMES, ["billing", "mailer", "search", "web-crawler"], timeout=3.0)
    assert time.monotonic() - started < 3.0
    assert await browser.evaluate("window.sameDocument") is True

    # Check results arrive the same way, with the status and the last output.
    statuses = f"{ROWS}.map(r => r.querySelector('.status').textContent)"
    await browser.wait_for(statuses, ["warning", "passing", "critical", "passing"])
    counts = "[...document.querySelectorAll('.summary .count')].map(c => c.textContent)"
    assert await browser.evaluate(counts) == ["4", "2", "1", "1", "0"]
    output = f"{row('billing-1')}.querySelector('.output').textContent"
    assert await browser.evaluate(output) == "429 slow down"

    # Tags filter with AND; the name box narrows further.
    await browser.evaluate(click_tag("prod"))
    assert await browser.evaluate(NAMES) == ["billing", "mailer", "search"]
    await browser.evaluate(click_tag("payments"))
    assert await browser.evaluate(NAMES) == ["billing"]
    await browser.evaluate("document.getElementById('clear-tags').click()")
    await browser.evaluate(type_search("CRAWL"))
    assert await browser.evaluate(NAMES) == ["web-crawler"]
    await browser.evaluate(type_search(""))

    await deregister(master, "mailer-1")
    await browser.wait_for(NAMES, ["billing", "search", "web-crawler"], timeout=3.0)
    await register(master, "mailer-1", "mailer", ["prod", "smtp"], REFUSED, interval="1h")
    await browser.wait_for(chips("mailer-1"), ["prod", "smtp"], timeout=3.0)
    assert await browser.evaluate(f"{row('mailer-1')}.querySelector('.status').textContent") == (
        "unknown"
    )
    assert await browser.evaluate("window.sameDocument") is True
    await browser.screenshot(SCREENSHOT)
    no_page_errors(browser)


async def test_hostile_service_data_renders_as_text(
    master: str, target: str, browser: Browser
) -> None:
    # Names are restricted to [a-z0-9._-] by the API; tags, addresses and check output are
    # free text.
    tags = [HOSTILE, '"><b>bold</b>']
    await register(master, "evil-1", "evil", tags, f"{target}/hostile", address="<script>x")
    await browser.navigate(f"{master}/")
    await browser.wait_for(chips("evil-1"), tags)
    address = f"{row('evil-1')}.querySelector('.address').textContent"
    assert await browser.evaluate(address) == "<script>x:8080"
    output = f"{row('evil-1')}.querySelector('.output')?.textContent"
    await browser.wait_for(output, f"200 {HOSTILE}")
    assert await browser.evaluate("document.querySelectorAll('img, b').length") == 0
    assert await browser.evaluate("document.scripts.length") == 1
    await browser.evaluate(click_tag(HOSTILE))
    assert await browser.evaluate(NAMES) == ["evil"]
    no_page_errors(browser)


async def test_asks_once_for_a_read_token(tmp_path: Path, browser: Browser) -> None:
    tokens = tmp_path / "read-tokens"
    tokens.write_text("s3cret\n")
    async with serving(build_app(MemoryStore(), Auth(None, TokenFile(tokens)))) as url:
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/dashboard/app.js", "/dashboard/style.css"):
                async with session.get(f"{url}{path}") as answer:
                    assert answer.status == 200, f"{path} must load without a token"
        await register(url, "web-1", "web", ["prod"])
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
    no_page_errors(browser)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ],
)
async def test_serves_files_with_types_and_revalidation(
    master: str, path: str, content_type: str
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{master}{path}") as answer:
            assert answer.status == 200
            assert answer.content_type == content_type
            assert answer.charset == "utf-8"
            assert answer.headers["Cache-Control"] == "no-cache"
            assert "default-src 'self'" in answer.headers["Content-Security-Policy"]
            etag = answer.headers["ETag"]
        async with session.get(f"{master}{path}", headers={"If-None-Match": etag}) as answer:
            assert answer.status == 304


@pytest.mark.parametrize(
    "path", ["/dashboard/nope.js", "/dashboard/__init__.py", "/dashboard/", "/dashboard/index.html"]
)
async def test_only_the_dashboard_files_are_served(master: str, path: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{master}{path}") as answer:
        assert answer.status == 404
        assert (await answer.json())["error"]["code"] == "not_found"
