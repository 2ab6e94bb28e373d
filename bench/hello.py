"""The ceiling: a plain aiohttp server that reads the request and answers a small JSON.

    python -m bench.hello      # prints "LISTENING <port>" on stdout; SIGTERM stops it

No middlewares, no routing table to speak of, no validation, no store: whatever the load
generator gets from this is as fast as aiohttp (and the client) go on this machine. It runs
on the daemons' own event loop (master.shared.daemon.run: uvloop where installed).
"""

from __future__ import annotations

from aiohttp import web

from bench.daemons import serve_until_signal
from master.shared import daemon

BODY = b'{"status":"ok"}'


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


def build() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


if __name__ == "__main__":
    daemon.run(serve_until_signal(build()))
