"""The sidecar's owner: starts every part in order, and stops them in reverse, bounded.

Start: the listening socket (its port names this sidecar as the holder of the id), the
HTTP session, the server, the sync loop (it registers), the file watcher. Stop,
on SIGTERM or SIGINT, or when a part fails: stop watching, stop the loop, deregister (at
most 3 s; after `sidecar.drain_grace` of reporting `draining`, if one is set), stop the
discovery cache (its waiting clients answered, its watchers stopped), stop serving (and
any check still running), close the session; under 5 s in all plus the
grace, then exit 0 (1 if a part failed). Each stop is pushed on an exit stack as its part
starts, so whatever has started is stopped, in order, also when starting or running
fails. A second signal shortens every wait still to come (the DELETE gets at most 1 s
more) but skips no step: the service is still deregistered and the session still closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web

from master.shared import daemon
from master.shared.daemon import (
    StopSignals,
    bound_address,
    cancel_and_wait,
    listen_socket,
)
from master.shared.logs import configure_logging
from master.shared.serving import Listener
from sidecar.checks import SharedCheck, build_check
from sidecar.config import Config, default_instance
from sidecar.desired import Desired
from sidecar.master_client import MasterClient
from sidecar.server import Guard, Sidecar, SidecarMetrics, build_server
from sidecar.sync import SyncLoop
from sidecar.watch import ConfigWatcher

log = structlog.get_logger("sidecar")

EXIT_CONFIG: Final = 2
EXIT_FAILED: Final = 1

# The stop budget, 5 s in all: each step's bound, and what is left of it after a second signal.
WATCH_STOP: Final = (0.25, 0.1)
LOOP_STOP: Final = (0.5, 0.1)  # cancels a PUT in flight: nothing re-registers after this
DEREGISTER: Final = (3.0, 1.0)
DRAIN_STOP: Final = (0.2, 0.1)  # a drain cut short: cancelled before the session closes
DISCOVERY_STOP: Final = (0.2, 0.1)  # answers its waiting clients, stops its watchers
SERVE_STOP: Final = (0.6, 0.1)
SERVE_SHUTDOWN_TIMEOUT: Final = 0.4  # for a /health in flight, within SERVE_STOP
CHECKS_STOP: Final = (0.15, 0.1)  # a check still running once nothing serves /health
SESSION_CLOSE: Final = (0.25, 0.1)
MAX_CONNECTIONS: Final = 256  # the master's checks, a kubelet's probes, a scrape or two
# A thread that parses YAML (a reload) or scans /proc (a process check) holds the GIL up to
# this long while the event loop waits for it; Python's 5 ms made a /health answer wait for
# many such turns. Free while only the loop runs: no other thread asks for the GIL then.
GIL_SWITCH_SECONDS: Final = 0.001


def run(config_path: str | Path, config: Config, log_format: str | None) -> int:
    configure_logging(log_format)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    return daemon.run(serve(Path(config_path), config))


async def serve(path: Path, config: Config) -> int:
    signals = StopSignals()
    signals.install()  # first: a SIGTERM while starting is a stop like any other
    owner = Owner(signals)
    try:
        async with owner:
            code = await _start(owner, path, config)
            if code is None:
                await signals.stop.wait()
    except Exception:  # a part failed to start: what did start is stopped by now
        log.exception("sidecar_failed", service_id=config.service.id)
        code = EXIT_FAILED
    finally:
        signals.remove()
    if code is None:
        code = EXIT_FAILED if owner.failed else 0
    log.info("sidecar_stopped", service_id=config.service.id, exit_code=code)
    return code


async def _start(owner: Owner, path: Path, config: Config) -> int | None:
    """Start the parts in order; an exit code if the sidecar cannot run at all."""
    listen = config.sidecar
    try:
        sock = listen_socket(listen.listen_host, listen.listen_port, backlog=256)
    except OSError as exc:
        log.error("listen_failed", listen=listen.listen, reason=exc.strerror)
        return EXIT_CONFIG
    owner.callback(sock.close)  # once served, the server closes it first; twice is fine
    # Who holds the id: this host and the port bound (port 0 names the one the kernel gave).
    instance = default_instance(sock.getsockname()[1])

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=16, ttl_dns_cache=60),
        auto_decompress=True,
    )
    owner.on_stop("close_session", session.close, SESSION_CLOSE)

    desired = Desired(config, instance)
    metrics = SidecarMetrics()
    sync = SyncLoop(desired, MasterClient(session), session, metrics.sync)

    def on_config(new: Config) -> None:
        if new.check != desired.config.check:
            sidecar.check = SharedCheck(build_check(new.check, session))
        sidecar.guard.update(new.sidecar.token_file)
        desired.update_config(new)

    watcher = ConfigWatcher(path, config, on_config)
    check = SharedCheck(build_check(config.check, session))
    sidecar = Sidecar(str(path), sync, check, watcher, metrics, Guard(listen.token_file))

    # handler_cancellation: a handler whose caller hung up is cancelled (aiohttp's default
    # lets it run on), so a discovery query held for minutes frees its slot of the bounded
    # few (and its connection to the master) at once. What must outlive a caller (a drain,
    # a shared check) is shielded from it.
    runner = web.AppRunner(
        build_server(sidecar),
        access_log=None,
        shutdown_timeout=SERVE_SHUTDOWN_TIMEOUT,
        handler_cancellation=True,
    )
    owner.on_stop("stop_checks", lambda: sidecar.check.close(), CHECKS_STOP)
    await runner.setup()
    # The shared listener: bounded connections and header reads, and aiohttp's own
    # refusals (a bad request line, headers too large) in the JSON error shape too.
    listener = Listener(runner, max_connections=MAX_CONNECTIONS)

    async def stop_serving() -> None:
        listener.stop()
        await runner.cleanup()

    owner.on_stop("stop_serving", stop_serving, SERVE_STOP)
    # Before serving stops: its blocking queries answer at once, instead of holding it up.
    owner.on_stop("stop_discovery", sidecar.discovery.close, DISCOVERY_STOP)
    await listener.start(sock)

    async def deregister() -> None:
        # Also after a /drain that no master answered (then `drained` is set, but the
        # service is still registered): the drain asked is still owed.
        current = desired.config
        if not sync.left and (current.sidecar.deregister_on_exit or sync.state.drained):
            await sync.drain()  # with a grace: `draining` first, then the DELETE

    def deregister_bounds() -> tuple[float, float]:
        """The DELETE's bound, after the grace if one is set (read at the stop: a reload
        may have changed it). A second signal cuts the grace short."""
        grace = desired.config.sidecar.drain_grace
        return DEREGISTER[0] + grace, DEREGISTER[1]

    sync.hurry = owner.signals.hurry
    owner.on_stop("stop_drain", sync.stop_drain, DRAIN_STOP)  # after "deregister", if cut
    owner.on_stop("deregister", deregister, deregister_bounds)  # once the loop has stopped
    owner.start_task("sync", sync.run(), LOOP_STOP)
    owner.start_task("watch", watcher.run(), WATCH_STOP)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, watcher.reload_now)
    owner.callback(loop.remove_signal_handler, signal.SIGHUP)
    log.info(
        "sidecar_started",
        listen=bound_address(sock),
        service_id=config.service.id,
        instance=instance,
        master_urls=list(config.master.urls),
        pid=os.getpid(),
    )
    for warning in config.warnings:
        log.warning("config_warning", warning=warning)
    return None


class Owner:
    """Holds what was started, and stops it in reverse order on the way out: each stop
    bounded by its timeout (cut shorter after a second signal), each one run even when
    the one before failed or timed out. A task that fails stops the sidecar."""

    def __init__(self, signals: StopSignals) -> None:
        self.signals = signals
        self.failed = False
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Owner:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._stack.__aexit__(*exc_info)

    def on_stop(
        self,
        name: str,
        stop: Callable[[], Awaitable[object]],
        bounds: tuple[float, float] | Callable[[], tuple[float, float]],
    ) -> None:
        """`bounds`: (seconds, seconds left after a second signal), or what gives them
        when the step runs."""

        async def step() -> None:
            seconds, hurried = bounds() if callable(bounds) else bounds
            try:
                if not await self.signals.within(stop(), seconds, hurried=hurried):
                    bound = hurried if self.signals.hurry.is_set() else seconds
                    log.warning("stop_step_cut_short", step=name, within_s=bound)
            except Exception:
                log.exception("stop_step_failed", step=name)

        self._stack.push_async_callback(step)

    def callback(self, undo: Callable[..., object], *args: Any) -> None:
        """Something instant to undo on the way out, in the same order as the stops."""
        self._stack.callback(undo, *args)

    def start_task(
        self, name: str, body: Coroutine[Any, Any, None], bounds: tuple[float, float]
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(body, name=f"sidecar-{name}")
        task.add_done_callback(lambda done: self._ended(name, done))

        async def stop() -> None:
            if not task.done():  # one that failed was reported when it did
                await cancel_and_wait(task)

        self.on_stop(f"stop_{name}", stop, bounds)
        return task

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return  # stopped by us, or done with its work (the sync loop, once drained)
        self.failed = True
        log.error("part_failed", part=name, exc_info=task.exception())
        self.signals.request(f"{name} failed")
