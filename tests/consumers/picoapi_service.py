"""A service built on the original picoapi 1.0.4 library, run as its README says: a PicoAPI
app (service mode: API_MASTER unset) served by uvicorn, configured by the environment
(API_TITLE, API_HOST, API_REGISTER_PATH, API_HEALTH_PATH, API_HEALTH_INTERVAL, API_TAGS).
At startup picoapi's own `register_uservice()` PUTs the service to API_REGISTER_PATH.

    .cache/picoapi-venv/bin/python tests/consumers/picoapi_service.py   # "LISTENING <port>"

Run by tests/test_consumer_picoapi.py in a venv of its own (picoapi, FastAPI, uvicorn: none
of them in the project's). It binds a free loopback port first and hands it to picoapi as
API_PORT, which picoapi reads when it registers. Exits on SIGTERM, as uvicorn does.
"""

from __future__ import annotations

import os
import socket

from fastapi.routing import APIRouter

# The shim: picoapi 1.0.4 calls `router.on_event("startup", register_uservice)`, the
# two-argument form current FastAPI no longer has (its on_event is a decorator factory).
APIRouter.on_event = lambda self, event, func: self.add_event_handler(event, func)


def main() -> None:
    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = sock.getsockname()[1]
    os.environ["API_PORT"] = str(port)

    # picoapi reads its settings from the environment when it is imported.
    import uvicorn
    from picoapi.api import PicoAPI

    app = PicoAPI(title=os.environ["API_TITLE"])
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    print(f"LISTENING {port}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
