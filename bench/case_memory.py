"""6. Master memory per registered service.

A fresh master process each time: its RSS once started, then 10,000 services PUT through
its API (64 concurrent), then its RSS again; the difference over N is the cost of one
service, everything included (the record, its indexes, its cached JSON, its schedule entry,
the store's copy on memory://, and whatever the allocator keeps from handling the PUTs).
With an OpenAPI document: the same with a 1.6 KB document in every registration. On
sqlite:/// the store's copy lives on disk, so that row shows the in-memory registry alone.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from bench.common import Procs, loadgen, log, mib
from bench.modes import Mode
from bench.workloads import openapi_document

SETTLE_S = 1.0


async def run(mode: Mode, logs: Path) -> dict[str, Any]:
    n = mode.memory_services
    variants = [
        ("memory", "memory://", False),
        ("memory_openapi", "memory://", True),
        ("sqlite", f"sqlite:///{logs}/memory-store/registry.db", False),
    ]
    results: dict[str, Any] = {
        "services": n,
        "openapi_bytes": len(json.dumps(openapi_document(0), separators=(",", ":"))),
    }
    for name, store, with_openapi in variants:
        with Procs(logs) as procs:
            master, url = await procs.master(store=store, name=f"memory-{name}")
            await asyncio.sleep(SETTLE_S)
            before = master.rss()
            filled = await loadgen(
                {
                    "base": url,
                    "concurrency": 64,
                    "requests": {
                        "kind": "register",
                        "n": n,
                        "interval": "1h",
                        "openapi": with_openapi,
                    },
                }
            )
            if filled["ok"] != n:
                raise RuntimeError(f"registered {filled['ok']} of {n}: {filled}")
            await asyncio.sleep(SETTLE_S)
            after = master.rss()
        results[name] = {
            "rss_before_mib": mib(before),
            "rss_after_mib": mib(after),
            "bytes_per_service": (after - before) / n,
        }
        log(
            f"memory {name:<15}: {mib(before):.1f} -> {mib(after):.1f} MiB, "
            f"{(after - before) / n:,.0f} bytes per service"
        )
    return results
