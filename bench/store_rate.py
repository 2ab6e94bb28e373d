"""How many durable puts per second each store takes from many concurrent writers.

Each writer awaits its put before the next, as a PUT handler does, so SQLite's rate shows
what group commit makes of one fsync per transaction.

    .venv/bin/python bench/store_rate.py
    .venv/bin/python bench/store_rate.py --records 50000 --writers 256
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from master.store import Store, open_store_url
from master.store.sqlite import SQLiteStore


def record(n: int) -> dict[str, Any]:
    """About the size of a real record without an OpenAPI document (~600 bytes)."""
    return {
        "id": f"svc-{n}",
        "name": "svc",
        "address": "10.0.0.5",
        "port": 8080,
        "scheme": "http",
        "tags": ["web_crawler", "examplehost.com", "dirty"],
        "meta": {"team": "data", "version": "1.4.2"},
        "check": {
            "url": "http://10.0.0.5:9501/health",
            "interval": "10s",
            "timeout": "2s",
            "failures_before_critical": 1,
            "successes_before_passing": 1,
            "deregister_after": "10m",
        },
        "status": "passing",
        "registered_at": "2026-11-28T13:35:38.123Z",
        "updated_at": "2026-11-28T13:35:38.123Z",
        "openapi_sha256": None,
        "last_check": None,
        "openapi": None,
    }


async def measure(store: Store, records: int, writers: int) -> float:
    """Puts per second for `records` puts spread over `writers` concurrent writers."""
    await store.open()

    async def writer(w: int) -> None:
        for n in range(w, records, writers):
            await store.put(f"svc-{n}", record(n))

    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.perf_counter() - started
    await store.close()
    return records / elapsed


async def run(urls: dict[str, str], records: int, writers: int) -> None:
    for label, url in urls.items():
        store = open_store_url(url)
        rate = await measure(store, records, writers)
        line = f"{label:<7} {rate:>10,.0f} puts/s"
        if isinstance(store, SQLiteStore):
            line += f"  ({store.commits} commits, {store.writes / store.commits:.1f} per commit)"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--dir", type=Path, help="where the SQLite file goes (default: a temp dir)")
    args = parser.parse_args()
    print(f"{args.records:,} records, {args.writers} concurrent writers")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        urls = {"memory": "memory://", "sqlite": f"sqlite:///{Path(tmp).resolve()}/registry.db"}
        asyncio.run(run(urls, args.records, args.writers))


if __name__ == "__main__":
    main()
