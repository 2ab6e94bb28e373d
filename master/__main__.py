"""`picoapi-master`: parse the configuration once, serve until a signal, shut down in order.

Signals only set a flag; shutdown is ordered and bounded: stop accepting, answer blocking
queries, finish in-flight writes, stop the health checks, close the store, exit 0. A second
signal cuts the wait for in-flight requests short, but the health checks still stop and the
store still closes, so every write acknowledged is on disk.
"""

from __future__ import annotations

import os
import ssl
import sys
from typing import Final

import structlog
from aiohttp import web

from master.api import REGISTRY
from master.auth import Auth
from master.config import ConfigError, MasterConfig, parse_master_config
from master.eviction import EvictionGuard
from master.policy import CheckPolicy
from master.shared import daemon
from master.shared.daemon import StopSignals, bound_address, listen_socket
from master.shared.logs import configure_logging
from master.shared.serving import Listener, raise_descriptor_limit, server_tls
from master.shared.tokens import TokenFile, TokenFileError
from master.store import open_store_url
from master.store.base import StoreLocked

log = structlog.get_logger("master")

EXIT_CONFIG: Final = 2
DESCRIPTORS_KEPT: Final = 128  # the store, logs, the etcd client, the odd file
MIN_CONNECTIONS: Final = 64
SHUTDOWN_TIMEOUT: Final = 5.0  # for requests in flight to finish
HURRIED_TIMEOUT: Final = 0.1  # what is left of that wait after a second signal (> 0)


def connection_limit(config: MasterConfig) -> int:
    """Connections we accept: what descriptors allow, less what checks and the store need."""
    soft, _ = raise_descriptor_limit()
    spare = config.check_concurrency + DESCRIPTORS_KEPT
    return max(MIN_CONNECTIONS, min(config.max_connections, soft - spare))


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
            TokenFile(config.read_token_file, read_only=True) if config.read_token_file else None,
        )
    except (ValueError, TokenFileError) as exc:
        print(f"picoapi-master: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from master.app import build_app

    app = build_app(
        store,
        auth,
        check_concurrency=config.check_concurrency,
        member_ttl=config.member_ttl,
        address=config.listen,
        policy=CheckPolicy(config.check_allow),
        max_watchers=config.max_watchers,
        read_timeout=config.read_timeout,
        max_document_bytes=config.max_document_bytes,
        picoapi_deregister_after=config.picoapi_deregister_after,
        eviction_guard=EvictionGuard(config.eviction_share, config.eviction_hold_max),
    )
    return daemon.run(serve(app, config))


async def serve(app: web.Application, config: MasterConfig) -> int:
    signals = StopSignals()
    signals.install()
    try:
        return await _serve(app, config, signals)
    finally:
        signals.remove()


async def _serve(app: web.Application, config: MasterConfig, signals: StopSignals) -> int:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    try:
        await runner.setup()
    except StoreLocked as exc:  # another master has the file: a configuration error
        log.error("store_locked", reason=str(exc), store=config.store)
        print(f"picoapi-master: {exc}", file=sys.stderr)
        await runner.cleanup()
        return EXIT_CONFIG
    except Exception as exc:  # the store failed to open: nothing to serve
        log.error("startup_failed", reason=str(exc), store=config.store)
        await runner.cleanup()
        return 1
    listen = f"{config.listen_host}:{config.listen_port}"
    try:
        sock = listen_socket(config.listen_host, config.listen_port, backlog=1024)
    except OSError as exc:
        log.error("listen_failed", listen=listen, reason=exc.strerror)
        await runner.cleanup()
        return EXIT_CONFIG
    listener = Listener(
        runner, max_connections=connection_limit(config), header_timeout=config.read_timeout
    )
    try:
        tls = server_tls(str(config.tls_cert), str(config.tls_key)) if config.tls_cert else None
    except (ssl.SSLError, OSError) as exc:
        log.error("tls_failed", reason=str(exc), cert=str(config.tls_cert))
        print(f"picoapi-master: --tls-cert/--tls-key: {exc}", file=sys.stderr)
        await runner.cleanup()
        return EXIT_CONFIG
    await listener.start(sock, tls)
    log.info(
        "master_started",
        listen=bound_address(sock),
        scheme="https" if tls else "http",
        store=config.store,
        pid=os.getpid(),
        max_connections=listener.max_connections,
        max_watchers=app[REGISTRY].max_waiters,
    )
    await signals.stop.wait()
    listener.stop()
    await _stop_serving(runner, signals)
    log.info("master_stopped")
    return 0


async def _stop_serving(runner: web.AppRunner, signals: StopSignals) -> None:
    """`runner.cleanup()` step by step, so that a second signal can cut the one wait that
    may be long (requests in flight) while the rest still runs: the app's cleanup stops the
    health checks and closes the store, and is never cut short."""
    for site in list(runner.sites):
        await site.stop()  # accept no more connections
    server = runner.server
    if server is not None:
        server.pre_shutdown()  # idle keep-alive connections close
        await runner.shutdown()  # on_shutdown: blocking queries answer now
        finished = await signals.within(
            server.shutdown(SHUTDOWN_TIMEOUT), SHUTDOWN_TIMEOUT, hurried=HURRIED_TIMEOUT
        )
        if not finished:
            log.warning("requests_cut_short", connections=len(server.connections))
            # aiohttp's own way to end what is still in flight (cancelled, then closed),
            # with a short wait this time.
            await server.shutdown(HURRIED_TIMEOUT)
    await runner.app.cleanup()


if __name__ == "__main__":
    sys.exit(main())
