"""Headless Chromium for tests, driven over the DevTools protocol with aiohttp.

No Selenium and no downloaded browser: the system's `chromium`, one page, one websocket.
The browser runs in its own process group, so closing it kills every process it started
(zygote, renderers) through that group's id, and its temporary profile goes with it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp

START_TIMEOUT: Final = 30.0
COMMAND_TIMEOUT: Final = 15.0
EXECUTABLES: Final = ("chromium", "chromium-browser", "google-chrome")
FLAGS: Final = (
    "--headless",
    "--remote-debugging-port=0",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--window-size=1280,800",
)
TRUTHY: Final = object()  # wait_for's default: any truthy value will do


def find_chromium() -> str | None:
    for name in EXECUTABLES:
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    """The browser refused a command, or a page script threw."""


class Browser:
    """One page of a headless Chromium; `events` holds every protocol event it sent."""

    def __init__(self, process: asyncio.subprocess.Process, profile: Path) -> None:
        self.process = process
        self.profile = profile
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        # event method -> what answers it (a paused request must be answered, or it hangs)
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {}
        self._handling: set[asyncio.Task[None]] = set()
        self.refused: list[str] = []  # requests refused by `offline_except`

    @classmethod
    async def launch(cls, executable: str) -> Browser:
        profile = Path(tempfile.mkdtemp(prefix="picoapi-chromium-"))
        process = await asyncio.create_subprocess_exec(
            executable,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        browser = cls(process, profile)
        try:
            await browser._connect()
        except BaseException:
            await browser.close()
            raise
        return browser

    async def _connect(self) -> None:
        port = await self._devtools_port()
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as answer:
            targets = await answer.json()
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read(self._ws))
        await self.send("Page.enable")
        await self.send("Runtime.enable")

    async def _devtools_port(self) -> int:
        """Chromium writes the port it picked to its profile once it listens."""
        path = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise CDPError(f"chromium exited with {self.process.returncode} at start")
            with contextlib.suppress(OSError):
                first = path.read_text().split("\n", 1)[0].strip()
                if first.isdigit():
                    return int(first)
            await asyncio.sleep(0.05)
        raise CDPError(f"chromium wrote no DevToolsActivePort within {START_TIMEOUT}s")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._pending.pop(data["id"], None) if "id" in data else None
            if future is None:
                self.events.append(data)
                handler = self._handlers.get(data.get("method", ""))
                if handler is not None:
                    task = asyncio.create_task(handler(data.get("params", {})))
                    self._handling.add(task)
                    task.add_done_callback(self._handling.discard)
            elif not future.done():
                future.set_result(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CDPError("the browser closed the connection"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None, "not connected"
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(COMMAND_TIMEOUT):
            answer = await future
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error'].get('message')}")
        result: dict[str, Any] = answer["result"]
        return result

    async def navigate(self, url: str) -> None:
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"navigating to {url}: {result['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """The value of a page expression (promises awaited), as JSON-able data."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            thrown = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"{expression!r} threw: {thrown}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, expected: Any = TRUTHY, timeout: float = 10.0) -> Any:
        """Poll a page expression until it is truthy (or equals `expected`); returns its value.

        Errors count as not yet: the page may be between two documents.
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = await self.evaluate(expression)
            except CDPError as exc:
                last = exc
            else:
                done = bool(last) if expected is TRUTHY else last == expected
                if done:
                    return last
            await asyncio.sleep(0.05)
        wanted = "true" if expected is TRUTHY else repr(expected)
        raise AssertionError(f"{expression!r} not {wanted} within {timeout}s (last: {last!r})")

    async def screenshot(self, path: str | Path, *, full_page: bool = False) -> None:
        """A PNG of the viewport, or of the whole page (`full_page`) at the viewport's width."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = await self.evaluate("[window.innerWidth, document.documentElement.scrollHeight]")
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
            )
        result = await self.send("Page.captureScreenshot", **params)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(target.write_bytes, base64.b64decode(result["data"]))

    async def viewport(self, width: int, height: int = 800) -> None:
        """Lay the page out as a window of this size (CSS pixels)."""
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def scripts(self, enabled: bool) -> None:
        """Turn the page's own scripts off (what the server painted, alone) or on again."""
        await self.send("Emulation.setScriptExecutionDisabled", value=not enabled)

    async def offline_except(self, origin: str) -> None:
        """No network but `origin`: every other request (another host, a CDN) fails as
        if offline, and its URL is kept in `refused`."""

        async def paused(params: dict[str, Any]) -> None:
            url = params["request"]["url"]
            if url == origin or url.startswith(origin + "/"):
                await self.send("Fetch.continueRequest", requestId=params["requestId"])
            else:
                self.refused.append(url)
                await self.send(
                    "Fetch.failRequest",
                    requestId=params["requestId"],
                    errorReason="InternetDisconnected",
                )

        self._handlers["Fetch.requestPaused"] = paused
        await self.send("Fetch.enable", patterns=[{"urlPattern": "*"}])

    def events_named(self, method: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("method") == method]

    async def close(self) -> None:
        """Kill the browser's process group by its id, reap it, and remove its profile."""
        for task in list(self._handling):
            task.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
