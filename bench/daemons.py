"""How bench's own small servers run: bind port 0, print `LISTENING <port>`, serve until
SIGTERM or SIGINT. Imports only aiohttp, so the sidecar-footprint floor stays a floor."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from pathlib import Path

from aiohttp import web


async def serve_until_signal(
    app: web.Application, *, extra_ports: int = 0, ports_file: Path | None = None
) -> None:
    """Serve on a free port (printed), plus `extra_ports` more (written to `ports_file`)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    await web.SockSite(runner, sock).start()
    extra = []
    for _ in range(extra_ports):
        site_sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        await web.SockSite(runner, site_sock).start()
        extra.append(site_sock.getsockname()[1])
    if ports_file is not None:
        with open(ports_file, "w") as out:  # a few bytes, before serving
            json.dump(extra, out)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
