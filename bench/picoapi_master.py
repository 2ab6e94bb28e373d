"""The original picoapi 1.0.4 master, run as its README says: a PicoAPI app in master mode
(API_MASTER set), served by uvicorn. Runs in bench/.venv-picoapi, which holds picoapi,
its FastAPI and uvicorn[standard]. uvicorn is told `loop="uvloop"` and `http="httptools"`
(as FastAPI recommends: its best case), not "auto": without them it fails to start rather
than fall back to asyncio and h11 unnoticed.

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
    import httptools
    import uvicorn
    import uvloop
    from picoapi.api import PicoAPI

    app = PicoAPI(title="picoapi-master")
    sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    print(
        f"uvicorn {uvicorn.__version__}, uvloop {uvloop.__version__}, httptools "
        f"{httptools.__version__}",
        flush=True,
    )
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
