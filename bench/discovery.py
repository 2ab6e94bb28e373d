"""Discovery through the sidecar: what a lookup costs at the sidecar against the master,
how soon a change reaches the sidecar's answer, and what an idle sidecar holds. Run by hand:

    bench/.venv/bin/python -m bench.discovery

The master (memory://) holds SERVICES instances of one name; one sidecar beside a Node.js
service is started, left idle, then asked. Lookups are sequential on one keep-alive
connection, the sidecar's and the master's taken in turns in one run, so the machine's
noise falls on both alike: compare the ratio, not the milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Procs, free_port, percentile

SERVICES = 200
LOOKUPS = 2_000  # each side, in turns
CHANGES = 20
IDLE_SECONDS = 5.0
QUESTION = "/v1/health/service/web?passing=true"


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, Procs(Path(tmp) / "logs") as procs:
        _, master = await procs.master()
        node, service_port = await procs.node_service()
        port = free_port()
        config = Path(tmp) / "sidecar.yaml"
        config.write_text(
            "service:\n  name: beside\n  id: beside-1\n  address: 127.0.0.1\n"
            f"  port: {service_port}\ncheck:\n  http: /healthz\n  interval: 10s\n"
            f"master:\n  url: {json.dumps(master)}\n"
            f"sidecar:\n  listen: 127.0.0.1:{port}\n  advertise: 127.0.0.1:{port}\n"
        )
        sidecar_proc = await procs.sidecar(config)
        sidecar = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for i in range(SERVICES):
                await _put(session, master, f"web-{i}", 10_000 + i)
            await asyncio.sleep(IDLE_SECONDS)
            idle = await _status(session, sidecar)
            idle_rss = sidecar_proc.rss()
            rows = await _lookups(session, master, sidecar)
            freshness = await _freshness(session, master, sidecar)
            asked = await _status(session, sidecar)
            asked_rss = sidecar_proc.rss()
        del node
    _print(rows, freshness, idle, idle_rss, asked, asked_rss)


async def _put(session: aiohttp.ClientSession, master: str, ident: str, port: int) -> None:
    body = {"name": "web", "address": "127.0.0.1", "port": port, "tags": ["bench"]}
    async with session.put(f"{master}/v1/services/{ident}", json=body) as answer:
        if answer.status != 200:
            raise RuntimeError(f"PUT {ident}: {answer.status} {await answer.text()}")


async def _status(session: aiohttp.ClientSession, sidecar: str) -> dict[str, Any]:
    async with session.get(f"{sidecar}/status") as answer:
        return dict((await answer.json())["discovery"])


async def _lookups(
    session: aiohttp.ClientSession, master: str, sidecar: str
) -> dict[str, list[float]]:
    """LOOKUPS of QUESTION at each, in turns; the sidecar's first (a miss) left out."""
    async with session.get(sidecar + QUESTION) as answer:
        first = await answer.read()
    seen: dict[str, list[float]] = {"master": [], "sidecar": []}
    for _ in range(LOOKUPS):
        for side, url in (("master", master), ("sidecar", sidecar)):
            started = time.perf_counter()
            async with session.get(url + QUESTION) as answer:
                body = await answer.read()
            seen[side].append(time.perf_counter() - started)
            if answer.status != 200 or len(body) != len(first):
                raise RuntimeError(f"{side}: {answer.status}, {len(body)} bytes")
    return seen


async def _freshness(session: aiohttp.ClientSession, master: str, sidecar: str) -> list[float]:
    """From a PUT's 200 at the master to the sidecar's blocking query answering it."""
    taken: list[float] = []
    for n in range(CHANGES):
        async with session.get(sidecar + QUESTION) as answer:
            index = answer.headers["X-Consul-Index"]
        waiter = asyncio.create_task(_blocking(session, f"{sidecar}{QUESTION}&index={index}"))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        await _put(session, master, f"web-new-{n}", 20_000 + n)
        await waiter
        taken.append(time.perf_counter() - started)
    return taken


async def _blocking(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url + "&wait=10s") as answer:
        await answer.read()


def _print(
    rows: dict[str, list[float]],
    freshness: list[float],
    idle: dict[str, Any],
    idle_rss: int,
    asked: dict[str, Any],
    asked_rss: int,
) -> None:
    print(f"{LOOKUPS} lookups of {QUESTION} ({SERVICES} instances) each, in turns:")
    print("| answered by | p50 | p99 | max |")
    print("|---|---:|---:|---:|")
    for side, samples in rows.items():
        p50, p99 = percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000
        print(f"| {side} | {p50:.2f} ms | {p99:.2f} ms | {max(samples) * 1000:.2f} ms |")
    ratio = percentile(rows["sidecar"], 0.5) / percentile(rows["master"], 0.5)
    print(f"sidecar p50 / master p50: {ratio:.2f}")
    print(
        f"a change, master's 200 to the sidecar's blocking answer ({CHANGES}): "
        f"p50 {percentile(freshness, 0.5) * 1000:.1f} ms, max {max(freshness) * 1000:.1f} ms"
    )
    print("| sidecar | questions | watchers | cached bytes | master queries | RSS |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, status, rss in ((f"idle {IDLE_SECONDS:.0f} s", idle, idle_rss),
                               ("after the lookups", asked, asked_rss)):  # fmt: skip
        print(
            f"| {label} | {status['questions']} | {status['watchers']} | "
            f"{status['cached_bytes']:,} | {status['master_queries']} | "
            f"{rss / 2**20:.1f} MiB |"
        )


if __name__ == "__main__":
    asyncio.run(main())
