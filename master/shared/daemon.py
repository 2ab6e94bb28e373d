"""What both daemons share about running: logs, the listening socket, stop signals.

The sidecar imports this module too (like `master.model`), so the two daemons log, listen
and stop the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, ClassVar, TypeVar

import structlog

log = structlog.get_logger("daemon")

T = TypeVar("T")


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where it is installed (Linux and macOS): the same loop for both daemons and
    for the benchmark's hello ceiling, so their figures compare like with like."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the daemons' event loop."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(main)


def package_version() -> str:
    """The installed distribution's version, for `--version` (both daemons)."""
    try:
        return importlib.metadata.version("picoapi-sidecar")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    """Bind before serving, so a busy port is a clear error and port 0 tells its number."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


def bound_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Stop a background task its owner started, and wait until it has really ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class StopSignals:
    """SIGTERM and SIGINT as two flags the owner reads; the handlers do nothing else.

    The first signal sets `stop`: the owner shuts down in order, each wait bounded (`limit`).
    A second one sets `hurry` as well: every bounded wait still running, and every one still
    to come, is cut to its shorter `hurried` bound, but every step still runs, so the sidecar
    still deregisters and the master still closes its store. Nothing here exits the process
    (an `os._exit` would lose both). Later signals change nothing more.
    """

    SIGNALS: ClassVar = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self._limits: dict[asyncio.Timeout, float] = {}  # the bounded waits running, to cut
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        self._loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            self._loop.add_signal_handler(signum, self._on_signal, signum)

    def remove(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            for signum in self.SIGNALS:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        self.request(signal.Signals(signum).name)

    def request(self, reason: str) -> None:
        """What a signal does: stop, or hurry if already stopping. An owner may call it for
        reasons of its own (a part that failed)."""
        if not self.stop.is_set():
            log.info("shutdown_requested", reason=reason)
            self.stop.set()
        elif not self.hurry.is_set():
            log.warning("shutdown_hurried", reason=reason)
            self.hurry.set()
            now = asyncio.get_running_loop().time()
            for timeout, hurried in self._limits.items():
                when = timeout.when()
                if not timeout.expired() and (when is None or when > now + hurried):
                    timeout.reschedule(now + hurried)

    @contextlib.asynccontextmanager
    async def limit(self, seconds: float, *, hurried: float) -> AsyncIterator[asyncio.Timeout]:
        """`asyncio.timeout(seconds)`, cut to `hurried` seconds from the moment of a second
        signal (or from the start, once hurried). Raises TimeoutError when the bound hits."""
        bound = min(seconds, hurried) if self.hurry.is_set() else seconds
        async with asyncio.timeout(bound) as timeout:
            self._limits[timeout] = hurried
            try:
                yield timeout
            finally:
                del self._limits[timeout]

    async def within(self, step: Awaitable[object], seconds: float, *, hurried: float) -> bool:
        """Await `step` under `limit`; False if the bound cut it short (it is cancelled)."""
        bounded: asyncio.Timeout | None = None
        try:
            async with self.limit(seconds, hurried=hurried) as bounded:
                await step
        except TimeoutError:
            if bounded is None or not bounded.expired():
                raise  # the step's own timeout, not ours
            return False
        return True
