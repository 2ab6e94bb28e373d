"""The load generator: an aiohttp client with bounded concurrency, in its own process.

    python -m bench.loadgen '{"base": "http://127.0.0.1:9500", "concurrency": 64,
                              "max_seconds": 60, "requests": {"kind": "register", "n": 10000}}'

Builds every request first (bodies encoded before the clock starts), then `concurrency`
workers send them over keep-alive connections, each awaiting its answer before the next.
Stops after the last request or `max_seconds`, whichever comes first, and prints one JSON
line: count, statuses, errors, elapsed, requests per second and latency percentiles.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
from yarl import URL

from bench.common import percentile
from bench.workloads import build

HEADERS = {"Content-Type": "application/json"}


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    base = spec["base"].rstrip("/")
    requests = [
        (method, URL(base + path, encoded=True), body)
        for method, path, body in build(spec["requests"])
    ]
    concurrency = int(spec.get("concurrency", 64))
    max_seconds = float(spec.get("max_seconds", 120))
    request_timeout = aiohttp.ClientTimeout(total=float(spec.get("request_timeout", 60)))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    next_index = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=request_timeout
    ) as session:
        cpu_started = time.process_time()
        started = time.perf_counter()
        deadline = started + max_seconds

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(requests):
                now = time.perf_counter()
                if now >= deadline:
                    return
                method, url, body = requests[next_index]
                next_index += 1
                try:
                    async with session.request(
                        method, url, data=body, headers=HEADERS if body else None
                    ) as answer:
                        await answer.read()
                        statuses[answer.status] += 1
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - now)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    done = sum(statuses.values())
    ok = sum(count for status, count in statuses.items() if 200 <= status < 300)
    return {
        "requests": len(requests),
        "done": done,
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "elapsed_s": elapsed,
        "rps": ok / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p90_ms": percentile(latencies, 0.90) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=0.0) * 1000,
        "concurrency": concurrency,
        "client_cpu_pct": 100 * cpu / elapsed if elapsed else 0.0,
        "truncated": done + sum(errors.values()) < len(requests),
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(run(spec))))


if __name__ == "__main__":
    main()
