"""`picoapi-master`: parse the configuration once, serve until a signal, shut down in order.

Signals only set a flag; shutdown is ordered and bounded: stop accepting, answer blocking
queries, finish in-flight writes, stop the health checks, close the store, exit 0. A second
signal forces the exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from typing import Final

import structlog
from aiohttp import web

from master.auth import Auth, TokenFile, TokenFileError
from master.config import ConfigError, MasterConfig, parse_master_config
from master.logs import configure_logging
from master.store import open_store_url

log = structlog.get_logger("master")

EXIT_CONFIG: Final = 2
SHUTDOWN_TIMEOUT: Final = 5.0


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_master_config(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"picoapi-master: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_format)
    try:
        store = open_store_url(config.store)
        auth = Auth(
            TokenFile(config.token_file) if config.token_file else None,
            TokenFile(config.read_token_file) if config.read_token_file else None,
        )
    except (ValueError, TokenFileError) as exc:
        print(f"picoapi-master: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from master.app import build_app

    app = build_app(store, auth, check_concurrency=config.check_concurrency)
    return asyncio.run(serve(app, config))


async def serve(app: web.Application, config: MasterConfig) -> int:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    try:
        await runner.setup()
    except Exception as exc:  # the store failed to open: nothing to serve
        log.error("startup_failed", reason=str(exc), store=config.store)
        await runner.cleanup()
        return 1
    try:
        sock = socket.create_server(
            (config.listen_host, config.listen_port),
            family=socket.AF_INET6 if ":" in config.listen_host else socket.AF_INET,
            backlog=1024,
        )
    except OSError as exc:
        log.error(
            "listen_failed",
            listen=f"{config.listen_host}:{config.listen_port}",
            reason=exc.strerror,
        )
        await runner.cleanup()
        return EXIT_CONFIG
    await web.SockSite(runner, sock).start()
    host, port = sock.getsockname()[:2]
    log.info("master_started", listen=f"{host}:{port}", store=config.store, pid=os.getpid())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stop.wait()
    await runner.cleanup()
    log.info("master_stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
