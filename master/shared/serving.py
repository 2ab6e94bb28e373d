"""Serving HTTP safely, for both daemons: bounded connections, bounded header reads, every
refusal in the JSON error shape, and as many descriptors as the system allows.

aiohttp answers malformed requests itself (a bad request line, headers over the limit)
with plain text, holds a connection that trickles its headers forever, and takes every
connection it is offered until the process runs out of descriptors: then the master's own
health checks fail with "Too many open files". So:

- `raise_descriptor_limit` lifts the soft RLIMIT_NOFILE to the hard one at start;
- `Listener` is the protocol factory given to the listening socket: past `max_connections`
  open connections a new one gets an immediate 503 with Retry-After (in the JSON error
  shape) and is closed, so descriptors stay for the checks and the store;
- `GuardedHandler` (aiohttp's RequestHandler) closes a connection whose request headers
  are not complete `header_timeout` after its first byte, and renders aiohttp's own error
  answers as `{"error": {code, message}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import ssl as ssl_module
from http import HTTPStatus
from typing import Any, Final

import msgspec
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from master.shared.logs import Budget

log = structlog.get_logger("master.shared.serving")

HEADER_TIMEOUT: Final = 10.0  # from a request's first byte to the end of its headers
KEEPALIVE_TIMEOUT: Final = 75.0  # an idle kept-alive connection (aiohttp's own default: 1 h)
RETRY_AFTER: Final = 1  # seconds, on a refusal for a full set of connections
TERMINATOR: Final = b"\r\n\r\n"
_ERROR_CODES: Final = {
    400: "bad_request",
    408: "request_timeout",
    413: "body_too_large",
    414: "uri_too_long",
    431: "headers_too_large",
    500: "internal",
    503: "unavailable",
}


def raise_descriptor_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (root cannot go past it either); returns
    (soft, hard) in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def server_tls(cert: str, key: str) -> ssl_module.SSLContext:
    """An HTTPS server context (TLS 1.2 at least); ssl.SSLError for a bad pair."""
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl_module.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    detail = {"code": code or _ERROR_CODES.get(status, "http_error"), "message": message}
    return msgspec.json.encode({"error": detail})


class GuardedHandler(RequestHandler):
    """aiohttp's request handler with a deadline on headers and JSON error answers."""

    def __init__(self, manager: Any, *, listener: Listener, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self._headers_done = False
        self._tail = b""
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._listener.open += 1
        super().connection_made(transport)
        self._arm()  # a connection that says nothing is held no longer than a slow one

    def connection_lost(self, exc: BaseException | None) -> None:
        self._listener.open -= 1
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._headers_done:
            seen = self._tail + data
            if TERMINATOR in seen:
                self._headers_done = True
                self._tail = b""
                self._disarm()
            else:
                self._tail = seen[-3:]
                if self._deadline is None:
                    self._arm()
        super().data_received(data)

    def request_done(self) -> None:
        """The answer is on its way: the next bytes begin the next request's headers."""
        self._headers_done = False

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._listener.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._listener.slow_logs.spend():
            log.warning("request_headers_too_slow", after_s=self._listener.header_timeout)
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.write(_canned(408, "the request's headers came too slowly"))
            self.transport.close()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own refusals (bad request line, headers too large...) in our shape,
        and in our log: one JSON event, at most one a second for a client's bad bytes
        (aiohttp's own handler writes a traceback of plain text for each)."""
        if status >= 500:
            log.error("request_failed", remote=request.remote, exc_info=exc)
        elif self._listener.bad_request_logs.spend():
            # The first line only: the next ones quote the client's bytes, a token perhaps.
            first = (message or "").strip().partition("\n")[0][:160]
            log.info("request_refused", status=status, remote=request.remote, reason=first)
        if request.writer.output_size > 0:  # some of an answer went out: the connection is lost
            raise ConnectionError("an answer is partly sent; no error answer can follow it")
        reason = message or HTTPStatus(status).phrase
        if status == 500:
            reason = "internal error; see the log"
        answer = web.Response(
            status=status, body=error_body(status, reason), content_type="application/json"
        )
        answer.force_close()
        return answer


def _canned(status: int, message: str, retry_after: int | None = None) -> bytes:
    body = error_body(status, message)
    phrase = HTTPStatus(status).phrase
    extra = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refusal(asyncio.Protocol):
    """The answer to a connection past the limit: 503, Retry-After, closed."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._listener.refused += 1
        if self._listener.refused_logs.spend():
            log.warning(
                "connections_full", open=self._listener.open, limit=self._listener.max_connections
            )
        message = f"too many open connections ({self._listener.max_connections}); retry"
        transport.write(_canned(503, message, RETRY_AFTER))  # type: ignore[attr-defined]
        transport.close()


class Listener:
    """The protocol factory for one listening socket of an aiohttp AppRunner."""

    def __init__(
        self,
        runner: web.AppRunner,
        *,
        max_connections: int,
        header_timeout: float = HEADER_TIMEOUT,
        handler_args: dict[str, Any] | None = None,
    ) -> None:
        self.runner = runner
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open = 0
        self.refused = 0
        self.slow_logs = Budget(log, "request_headers_too_slow", 1)
        self.refused_logs = Budget(log, "connections_full", 1)
        self.bad_request_logs = Budget(log, "request_refused", 1)
        self._handler_args = {
            "keepalive_timeout": KEEPALIVE_TIMEOUT,
            "access_log": None,
            **(handler_args or {}),
        }
        self._server: asyncio.base_events.Server | None = None

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open >= self.max_connections:
            return _Refusal(self)
        server = self.runner.server
        assert server is not None, "the runner is set up before it listens"
        loop = asyncio.get_running_loop()
        return GuardedHandler(server, loop=loop, listener=self, **self._handler_args)

    async def start(self, sock: Any, ssl: ssl_module.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self, sock=sock, ssl=ssl)

    def stop(self) -> None:
        """Stop accepting (the runner's cleanup then ends the connections; waiting for
        them here would wait on what only that cleanup ends)."""
        if self._server is not None:
            self._server.close()
            self._server = None


async def refuse_other_methods(request: web.Request, fallback: Any) -> None:
    """For a catch-all route (`fallback` is its handler): a path served by another route,
    asked with a method that route does not take, is 405 with its Allow, not the catch-all."""
    for resource_ in request.app.router.resources():
        if all(route.handler is not fallback for route in resource_):
            _, allowed = await resource_.resolve(request)
            if allowed:
                raise web.HTTPMethodNotAllowed(request.method, allowed)


def request_done(request: web.Request) -> None:
    """Tell the connection its request is answered (see GuardedHandler)."""
    protocol = request.protocol
    if isinstance(protocol, GuardedHandler):
        protocol.request_done()
