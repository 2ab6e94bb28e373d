"""The target swarm: one aiohttp process answering health checks on many ports.

    python -m bench.swarm PORTS PORTS_FILE [INTERVAL]

Listens on PORTS loopback ports, writes them to PORTS_FILE as a JSON list, then prints
`LISTENING <control port>`. Each port answers:

- `GET /health/{i}`: 200 with a small JSON, at once; the hit is recorded for service i.
- `GET /hang/{i}`: answers only after HANG_SECONDS, well past any check's timeout.
- `POST /_control/reset`: forget the hits so far and start a measuring window.
- `GET /_control/report`: the window so far: hits, hits per second, and the gaps between
  consecutive checks of one service minus INTERVAL (how much later than promised each check
  came; for a fixed-rate scheduler about 0, for a fixed-delay one its drift).
- `POST /_control/record`: from now on, also keep the time of every hit, per service (at
  most RECORD_MAX in all); `GET /_control/record` returns them, `{"now": t, "hits": {i:
  [t, ...]}}`, and stops recording. Times are this process's `time.monotonic()`:
  CLOCK_MONOTONIC, the same clock in every process of the machine, so a caller compares
  them with its own (the failover case: when each service was first checked after a kill).

The swarm runs in its own process, so what it costs is not counted against the master; on
the daemons' event loop (master.shared.daemon.run: uvloop where installed).
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from pathlib import Path
from typing import Final

from aiohttp import web

from bench.common import percentile
from bench.daemons import serve_until_signal
from master.shared import daemon

HEALTH_BODY: Final = b'{"status":"passing","check":"http","output":"ok","duration_ms":0.1}'
HANG_SECONDS: Final = 30.0
GAPS_MAX: Final = 2_000_000
RECORD_MAX: Final = 2_000_000


class Hits:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last: dict[str, float] = {}
        self.gaps: list[float] = []
        self.count = 0
        self.hangs = 0
        self.window_start = time.monotonic()
        self.recorded: dict[str, list[float]] | None = None  # every hit's time, when asked
        self.record_count = 0

    def hit(self, service: str) -> None:
        now = time.monotonic()
        self.count += 1
        previous = self.last.get(service)
        self.last[service] = now
        if previous is not None and len(self.gaps) < GAPS_MAX:  # gaps that end in the window
            self.gaps.append(now - previous - self.interval)
        if self.recorded is not None and self.record_count < RECORD_MAX:
            self.recorded.setdefault(service, []).append(now)
            self.record_count += 1

    def start_recording(self) -> None:
        self.recorded = {}
        self.record_count = 0

    def take_recording(self) -> dict[str, object]:
        found, self.recorded = self.recorded or {}, None
        return {"now": time.monotonic(), "hits": found, "full": self.record_count >= RECORD_MAX}

    def reset(self) -> None:
        self.gaps = []
        self.count = 0
        self.hangs = 0
        self.window_start = time.monotonic()

    def report(self) -> dict[str, float]:
        window = time.monotonic() - self.window_start
        gaps = self.gaps
        return {
            "window_s": window,
            "hits": self.count,
            "hangs": self.hangs,
            "hits_per_s": self.count / window if window else 0.0,
            "services_seen": len(self.last),
            "gaps": len(gaps),
            "late_p50_s": percentile(gaps, 0.50),
            "late_p99_s": percentile(gaps, 0.99),
            "late_max_s": max(gaps, default=float("nan")),
            "late_mean_s": sum(gaps) / len(gaps) if gaps else float("nan"),
        }


HITS: Final = web.AppKey("hits", Hits)


async def health(request: web.Request) -> web.Response:
    request.app[HITS].hit(request.match_info["id"])
    return web.Response(body=HEALTH_BODY, content_type="application/json")


async def hang(request: web.Request) -> web.Response:
    request.app[HITS].hangs += 1
    await asyncio.sleep(HANG_SECONDS)
    return web.Response(body=HEALTH_BODY, content_type="application/json")


async def reset(request: web.Request) -> web.Response:
    request.app[HITS].reset()
    return web.json_response({"ok": True})


async def report(request: web.Request) -> web.Response:
    return web.json_response(request.app[HITS].report())


async def record(request: web.Request) -> web.Response:
    request.app[HITS].start_recording()
    return web.json_response({"now": time.monotonic()})


async def recorded(request: web.Request) -> web.Response:
    return web.json_response(request.app[HITS].take_recording())


async def serve(ports: int, ports_file: Path, interval: float) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    app = web.Application()
    app[HITS] = Hits(interval)
    app.router.add_get("/health/{id}", health)
    app.router.add_get("/hang/{id}", hang)
    app.router.add_post("/_control/reset", reset)
    app.router.add_get("/_control/report", report)
    app.router.add_post("/_control/record", record)
    app.router.add_get("/_control/record", recorded)
    await serve_until_signal(app, extra_ports=ports, ports_file=ports_file)


if __name__ == "__main__":
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    daemon.run(serve(int(sys.argv[1]), Path(sys.argv[2]), interval))
