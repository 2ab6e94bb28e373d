"""The original picoapi 1.0.4 master, run as its README says: a PicoAPI app in master mode
(API_MASTER set), served by uvicorn. Runs in bench/.venv-picoapi, which holds picoapi,
its FastAPI and uvicorn[standard] (uvloop and httptools, as FastAPI recommends).

    bench/.venv-picoapi/bin/python -m bench.picoapi_master   # prints "LISTENING <port>"

picoapi reads its settings when its module is imported, so they are set before the import.
Only the standard library, picoapi and uvicorn are imported here: this venv has nothing else.
"""

from __future__ import annotations

import os
import socket

os.environ.setdefault("API_MASTER", "1")
os.environ.setdefault("API_HEALTH_PATH", "/health")


def main() -> None:
    import uvicorn
    from picoapi.api import PicoAPI

    app = PicoAPI(title="picoapi-master")
    sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
