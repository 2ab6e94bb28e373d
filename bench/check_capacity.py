"""How many health checks the master's scheduler sustains, and how late they start.

The in-process companion of `make bench`'s health-check case (bench/case_health.py, which
runs the real master process): starts the same target swarm (bench/swarm.py, one aiohttp
process listening on many ports of 127.0.0.1), registers N services in a
Registry(MemoryStore()) in this process, runs the HealthScheduler for a while and prints
checks/s, lag percentiles, CPU and RSS. No HTTP API in the way: handy under a profiler.

    .venv/bin/python -m bench.check_capacity                     # 10,000 services at 10 s
    .venv/bin/python -m bench.check_capacity --services 2000 --duration 10
    .venv/bin/python -m bench.check_capacity --fresh-connections # no keep-alive reuse

With keep-alive, the swarm's few ports let services share pooled connections, which real
services on distinct hosts cannot; `--fresh-connections` opens a new connection for every
check, the other bound of the real cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import aiohttp
import psutil
import structlog

from master.health import DEFAULT_CONCURRENCY, HealthScheduler
from master.metrics import Metrics
from master.model import CheckSpec, Registration, Status
from master.registry import Registry
from master.store.memory import MemoryStore

DEFAULT_SERVICES = 10_000
DEFAULT_INTERVAL = 10.0
DEFAULT_TIMEOUT = 2.0
DEFAULT_DURATION = 30.0
DEFAULT_PORTS = 50


# --- the benchmark (runs in this process) -----------------------------------------------


def fresh_session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def histogram_share_over(metrics: Metrics, name: str, bound: float) -> float:
    """The share of observations above `bound` (a bucket edge) over the whole run."""
    total = metrics.registry.get_sample_value(f"{name}_count") or 0.0
    within = metrics.registry.get_sample_value(f"{name}_bucket", {"le": str(float(bound))}) or 0.0
    return (total - within) / total if total else 0.0


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ports_file = Path(tmp) / "ports.json"
        swarm = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.swarm",
            str(args.ports),
            str(ports_file),
            str(args.interval),
            stdout=asyncio.subprocess.PIPE,
        )
        assert swarm.stdout is not None
        await swarm.stdout.readline()  # LISTENING: the ports file is written
        ports: list[int] = json.loads(ports_file.read_text())
    registry = Registry(MemoryStore())
    await registry.load()
    metrics = Metrics()
    factory = partial(fresh_session, args.concurrency) if args.fresh_connections else None
    scheduler = HealthScheduler(
        registry, metrics, concurrency=args.concurrency, session_factory=factory
    )
    me, child = psutil.Process(), psutil.Process(swarm.pid)
    try:
        started = time.perf_counter()
        for i in range(args.services):
            url = f"http://127.0.0.1:{ports[i % len(ports)]}/health/{i}"
            spec = CheckSpec(url=url, interval=args.interval, timeout=args.timeout)
            registration = Registration(
                id=f"svc-{i}",
                name=f"svc-{i % 100}",
                address="127.0.0.1",
                port=ports[i % len(ports)],
                check=spec,
            )
            await registry.put(registration, None)
        registered_in = time.perf_counter() - started
        # Started after registering, as the app starts it after loading the store: the
        # registrations above never yield, so checks due meanwhile would only measure them.
        await scheduler.start()

        me.cpu_percent(None)
        child.cpu_percent(None)
        checks_before = _checks_total(metrics)
        window_start = time.perf_counter()
        await asyncio.sleep(args.duration)
        window = time.perf_counter() - window_start
        checks = _checks_total(metrics) - checks_before
        cpu, child_cpu = me.cpu_percent(None), child.cpu_percent(None)
        rss = me.memory_info().rss
        lags = scheduler.lag_samples()
        statuses = {s.value: len(registry.query(status=s)) for s in Status}
    finally:
        await scheduler.stop()
        swarm.terminate()
        await swarm.wait()

    lag_name = "picoapi_check_lag_seconds"
    rows = [
        ("services", f"{args.services:,} at {args.interval:g}s, concurrency {args.concurrency}"),
        ("connections", "new per check" if args.fresh_connections else "keep-alive pool"),
        ("registered in", f"{registered_in:.2f} s"),
        ("checks/s", f"{checks / window:,.0f} (expected {args.services / args.interval:,.0f})"),
        ("lag p50", f"{percentile(lags, 0.50) * 1000:.1f} ms (last {len(lags):,} checks)"),
        ("lag p99", f"{percentile(lags, 0.99) * 1000:.1f} ms"),
        ("lag max", f"{max(lags, default=0.0) * 1000:.1f} ms"),
        ("lag > 100 ms", f"{histogram_share_over(metrics, lag_name, 0.1):.2%} of the whole run"),
        ("lag > 1 s", f"{histogram_share_over(metrics, lag_name, 1.0):.2%} of the whole run"),
        ("check p50", f"<= {_check_p50(metrics) * 1000:g} ms (histogram bucket)"),
        ("CPU master", f"{cpu:.0f} % of one core"),
        ("CPU swarm", f"{child_cpu:.0f} % of one core"),
        ("RSS master", f"{rss / 2**20:.0f} MiB"),
        ("statuses", ", ".join(f"{k} {v}" for k, v in statuses.items() if v)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _checks_total(metrics: Metrics) -> float:
    return sum(
        metrics.registry.get_sample_value("picoapi_checks_total", {"status": s.value}) or 0.0
        for s in Status
    )


def _check_p50(metrics: Metrics) -> float:
    """The median check duration, read off the histogram's buckets (an upper bound)."""
    name = "picoapi_check_seconds"
    total = metrics.registry.get_sample_value(f"{name}_count") or 0.0
    for metric in metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_bucket" and sample.value >= total / 2:
                return float(sample.labels["le"])
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=DEFAULT_SERVICES)
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION)
    parser.add_argument("--ports", type=int, default=DEFAULT_PORTS)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--fresh-connections", action="store_true")
    args = parser.parse_args()
    # One log line per registration and status change would measure the console, not us.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
