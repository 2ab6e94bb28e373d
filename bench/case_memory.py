"""6. Master memory per registered service.

A fresh master process each time: its RSS once started, then N services PUT through
its API (64 concurrent), then its RSS again; the difference over N is the cost of one
service, everything included (the record, its indexes, its cached JSON, its schedule entry,
the store's copy on memory://, and whatever the allocator keeps from handling the PUTs).
With an OpenAPI document: the same with a 1.6 KB document in every registration. On
sqlite:/// the store's copy lives on disk, so that row shows the in-memory registry alone.
Replicas: 40 instances of one name sharing one 0.45 MB document (kept once, by sha256).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from bench.cases import Case, Result, Row, get, goal, num
from bench.common import Procs, loadgen, log, mib
from bench.modes import Mode
from bench.workloads import openapi_document

SETTLE_S = 1.0
REPLICAS = 40
SHARED_DOCUMENT_PATHS = 1920  # about 0.45 MB of JSON


def shared_document() -> dict[str, Any]:
    """One large document (about 0.45 MB), as a service with a big API serves it."""
    operation = {
        "summary": "x" * 40,
        "parameters": [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {"200": {"description": "ok " * 10}},
    }
    paths = {f"/items{i}/{{id}}": {"get": operation} for i in range(SHARED_DOCUMENT_PATHS)}
    return {"openapi": "3.0.3", "info": {"title": "web", "version": "1.0"}, "paths": paths}


async def replicas_sharing_a_document(logs: Path) -> dict[str, Any]:
    """RSS before and after REPLICAS PUTs of one name with the same large document."""
    import aiohttp

    document = shared_document()
    with Procs(logs) as procs:
        master, url = await procs.master(
            store=f"sqlite:///{logs}/memory-replicas/registry.db", name="memory-replicas"
        )
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(SETTLE_S)
            before = master.rss()
            for i in range(REPLICAS):
                body = {
                    "name": "web",
                    "address": "127.0.0.1",
                    "port": 9000 + i,
                    "openapi": document,
                }
                async with session.put(f"{url}/v1/services/web-{i}", json=body) as answer:
                    if answer.status != 200:
                        raise RuntimeError(f"replica {i}: {answer.status} {await answer.text()}")
            await asyncio.sleep(SETTLE_S)
            after = master.rss()
    size = len(json.dumps(document, separators=(",", ":")))
    log(
        f"memory replicas: {REPLICAS} sharing a {size / 1e6:.2f} MB document: "
        f"{mib(before):.1f} -> {mib(after):.1f} MiB, {(after - before) / REPLICAS:,.0f} bytes each"
    )
    return {
        "replicas": REPLICAS,
        "document_bytes": size,
        "rss_before_mib": mib(before),
        "rss_after_mib": mib(after),
        "bytes_per_service": (after - before) / REPLICAS,
    }


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
    results["replicas"] = await replicas_sharing_a_document(logs)
    return results


# --- the report ------------------------------------------------------------------------

GOAL_BYTES = 2048


def goals(mem: Result) -> list[Row]:
    per = get(mem, "memory", "bytes_per_service")
    count = mem.get("services") or 0
    return [
        goal(
            f"Master memory per registered service, no OpenAPI document (RSS after {count:,}"
            " minus before, over N; memory://), vs 2 KiB",
            f"{num(per)} bytes",
            per,
            GOAL_BYTES,
            baseline="3.4 KiB",
            need=1,
            at_least=False,
            need_text="<= 2 KiB",
        )
    ]


def headline(mem: Result) -> dict[str, Any]:
    return {
        "master_bytes_per_service": get(mem, "memory", "bytes_per_service"),
        "master_bytes_per_service_openapi": get(mem, "memory_openapi", "bytes_per_service"),
        "master_bytes_per_service_sqlite": get(mem, "sqlite", "bytes_per_service"),
    }


def section(mem: Result) -> list[str]:
    lines = [
        "",
        f"## 6. Master memory ({mem['services']:,} services, a fresh master each)",
        "",
        "| store, document | RSS before MiB | RSS after MiB | bytes per service |",
        "|---|---:|---:|---:|",
    ]
    labels = {
        "memory": "memory://, no OpenAPI document",
        "memory_openapi": f"memory://, a {mem['openapi_bytes']:,}-byte OpenAPI document each",
        "sqlite": "sqlite:///, no OpenAPI document",
    }
    if "replicas" in mem:
        r = mem["replicas"]
        labels["replicas"] = (
            f"sqlite:///, {r['replicas']} replicas sharing one {r['document_bytes'] / 1e6:.2f} MB "
            "document (kept once)"
        )
    for key, label in labels.items():
        if key in mem:
            r = mem[key]
            lines.append(
                f"| {label} | {r['rss_before_mib']:.1f} | {r['rss_after_mib']:.1f} | "
                f"{r['bytes_per_service']:,.0f} |"
            )
    return lines


def plots(mem: Result, out: Path) -> list[str]:
    import matplotlib.pyplot as plt

    keys = [k for k in ("memory", "memory_openapi", "sqlite") if k in mem]
    if not keys:
        return []
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.bar(keys, [mem[k]["bytes_per_service"] for k in keys], color="#f28e2b")
    ax.axhline(GOAL_BYTES, color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel("bytes per service (goal <= 2 KiB w/o doc)")
    ax.set_title("6. Master memory")
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)
    return ["memory.png"]


CASE = Case(
    name="memory",
    order=60,
    run=run,
    goals=goals,
    section=section,
    headline=headline,
    plots=plots,
)
