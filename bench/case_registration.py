"""1. Registration: PUTs per second from 64 concurrent clients, 10,000 distinct services.

Targets, each a fresh server, measured in turn within each repeat (so drift on a noisy
machine hits all alike): the hello ceiling, our master on sqlite:/// and on memory://, and
the original picoapi master. Its /register route is GET-only as shipped (its own services
PUT and get 405), so it gets what it accepts: GET /register with the JSON body. Each
service's check is one hour away, so no check runs during the measurement; picoapi starts
a thread per service that checks at once, as it does: that is what its registration costs.
`picoapi (route only)` sends no healthcheck, to show the route alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.common import Proc, Procs, loadgen, log, median
from bench.modes import Mode

CONCURRENCY = 64
PICOAPI_CHECK_INTERVAL = 3600  # seconds: as our 1 h; each thread still checks once at start


async def run(mode: Mode, logs: Path) -> dict[str, Any]:
    n = mode.register_n
    runs: dict[str, list[dict[str, Any]]] = {}
    register = {"kind": "register", "n": n, "interval": "1h"}
    targets: list[tuple[str, dict[str, Any], float]] = [
        ("hello", register, 120.0),
        ("sqlite", register, 120.0),
        ("memory", register, 120.0),
        (
            "picoapi",
            {"kind": "picoapi", "n": n, "picoapi_interval": PICOAPI_CHECK_INTERVAL},
            mode.picoapi_register_seconds,
        ),
        ("picoapi_route", {"kind": "picoapi", "n": n, "no_healthcheck": True}, 120.0),
    ]
    for repeat in range(mode.repeats):
        for name, requests, max_seconds in targets:
            store_dir = logs / f"store-{name}-{repeat}"
            with Procs(logs) as procs:
                server, url = await _start(procs, name, store_dir)
                result = await loadgen(
                    {
                        "base": url,
                        "concurrency": CONCURRENCY,
                        "max_seconds": max_seconds,
                        "requests": requests,
                    },
                    server,
                )
            shutil.rmtree(store_dir, ignore_errors=True)
            runs.setdefault(name, []).append(result)
            log(
                f"registration {name:<13} #{repeat + 1}: {result['rps']:8,.0f}/s "
                f"p99 {result['p99_ms']:6.1f} ms ({result['ok']:,} ok, client CPU "
                f"{result['client_cpu_pct']:.0f} %, server {result['server_cpu_pct']:.0f} %, "
                f"{result['server_cpu_us']:.0f} us/request)"
            )
    return {
        "services": n,
        "concurrency": CONCURRENCY,
        "repeats": mode.repeats,
        "targets": {name: summarize(results) for name, results in runs.items()},
    }


async def _start(procs: Procs, name: str, store_dir: Path) -> tuple[Proc, str]:
    if name == "hello":
        hello, port = await procs.helper("hello")
        return hello, f"http://127.0.0.1:{port}"
    if name in ("picoapi", "picoapi_route"):
        return await procs.picoapi_master()
    store = "memory://" if name == "memory" else f"sqlite:///{store_dir}/registry.db"
    return await procs.master(store=store)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rps": median(r["rps"] for r in results),
        "rps_runs": [round(r["rps"], 1) for r in results],
        "p50_ms": median(r["p50_ms"] for r in results),
        "p99_ms": median(r["p99_ms"] for r in results),
        "ok": [r["ok"] for r in results],
        "requests": [r["requests"] for r in results],
        "errors": [r["errors"] for r in results],
        "statuses": [r["statuses"] for r in results],
        "client_cpu_pct": median(r["client_cpu_pct"] for r in results),
        "server_cpu_pct": median(r["server_cpu_pct"] for r in results),
        "server_cpu_us": median(r["server_cpu_us"] for r in results),
        "truncated": any(r["truncated"] for r in results),
    }
