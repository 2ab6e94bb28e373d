"""The sidecar's owner: starts every part, and stops them in order on a signal.

Start: serve HTTP, start the sync loop (register) and the file watcher. Stop (SIGTERM or
SIGINT): stop watching, stop the sync loop, deregister (bounded), stop serving, exit 0 —
all within 5 s. A second signal forces the exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Final

import aiohttp
import structlog
from aiohttp import web

from master.shared import daemon
from master.shared.daemon import bound_address, configure_logging, listen_socket, stop_on_signals
from sidecar.checks import SharedCheck, build_check
from sidecar.config import Config
from sidecar.server import Sidecar, build_server
from sidecar.sync import Syncer
from sidecar.watch import ConfigWatcher

log = structlog.get_logger("sidecar")

DEREGISTER_BUDGET: Final = 3.0  # of the 5 s a stop may take
EXIT_CONFIG: Final = 2


def run(config_path: str | Path, config: Config, log_format: str | None) -> int:
    configure_logging(log_format)
    return daemon.run(serve(Path(config_path), config))


async def serve(path: Path, config: Config) -> int:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=16, ttl_dns_cache=60),
        auto_decompress=True,
    )
    syncer = Syncer(config, session)

    def on_config(new: Config) -> None:
        if new.check != syncer.config.check:
            sidecar.check = SharedCheck(build_check(new.check, session))
        syncer.update_config(new)

    watcher = ConfigWatcher(path, config, on_config)
    sidecar = Sidecar(str(path), syncer, SharedCheck(build_check(config.check, session)), watcher)
    runner = web.AppRunner(build_server(sidecar), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    listen = config.sidecar
    try:
        sock = listen_socket(listen.listen_host, listen.listen_port, backlog=256)
    except OSError as exc:
        log.error("listen_failed", listen=listen.listen, reason=exc.strerror)
        await runner.cleanup()
        await session.close()
        return EXIT_CONFIG
    stop = stop_on_signals()
    await web.SockSite(runner, sock).start()
    log.info(
        "sidecar_started",
        listen=bound_address(sock),
        service_id=config.service.id,
        master_urls=list(config.master.urls),
        pid=os.getpid(),
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, watcher.reload_now)

    syncer.start()
    watcher.start()
    await stop.wait()

    await watcher.stop()
    await syncer.stop()
    current = syncer.config
    if current.sidecar.deregister_on_exit and not syncer.state.drained:
        try:
            async with asyncio.timeout(DEREGISTER_BUDGET):
                await syncer.deregister()
        except TimeoutError:
            log.warning(
                "deregister_failed",
                service_id=current.service.id,
                reason=f"no answer within {DEREGISTER_BUDGET:g}s",
            )
    await runner.cleanup()
    await session.close()
    log.info("sidecar_stopped", service_id=current.service.id)
    return 0
