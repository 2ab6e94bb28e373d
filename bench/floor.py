"""The sidecar's floor: a bare Python process importing what the sidecar cannot do without
(aiohttp, pyyaml, psutil, structlog) and serving one route. Nothing a sidecar could shed
is here, so its RSS is the least any Python sidecar on these libraries can weigh.

    python -m bench.floor      # prints "LISTENING <port>"; SIGTERM stops it

It runs on the daemons' own event loop (master.shared.daemon.run: uvloop where installed),
as the sidecar does, so the floor carries the same loop.
"""

from __future__ import annotations

import psutil
import structlog
import yaml
from aiohttp import web

from bench.daemons import serve_until_signal
from master.shared import daemon

LIBRARIES = (psutil, structlog, yaml)  # imported for their weight, as the sidecar does


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "passing"})


if __name__ == "__main__":
    app = web.Application()
    app.router.add_get("/health", health)
    daemon.run(serve_until_signal(app))
