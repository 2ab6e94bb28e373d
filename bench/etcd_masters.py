"""Several masters on one etcd, for the cases that measure them (failover, capacity,
steady-state writes): start them, learn their member names, wait for them to agree, fill
the registry, read their metrics.

Every master is a `picoapi-master --store etcd://127.0.0.1:PORT/PREFIX --member-ttl TTL`
started through `common.Procs` (stopped by its pid); every check points at the swarm
(bench/swarm.py), service `svc-i` at `/health/i` on one of its ports.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.common import (
    START_TIMEOUT,
    Proc,
    Procs,
    Sample,
    get_json,
    get_text,
    histogram_buckets,
    loadgen,
    metric_sum,
    parse_prometheus,
)
from bench.etcd_server import Etcd

LAG = "picoapi_check_lag_seconds"
CHECKS = "picoapi_checks_total"
CONCURRENCY = 64  # the Python client's, filling the registry


@dataclass
class Master:
    proc: Proc
    url: str
    member: str  # its name under members/ (from /healthz)
    extra: dict[str, Any] = field(default_factory=dict)


def ttl_flag(ttl_s: float) -> list[str]:
    return ["--member-ttl", f"{ttl_s:g}s"]


async def start_master(
    procs: Procs,
    session: aiohttp.ClientSession,
    etcd: Etcd,
    prefix: str,
    ttl_s: float,
    name: str,
    timeout: float = START_TIMEOUT,
) -> Master:
    """A master on `etcd` under `prefix`, once it has joined; `timeout` to start (a master
    joining a registry of 30,000 services reads them all first)."""
    store = etcd.store_url(prefix)
    proc, url = await procs.master(store=store, name=name, extra=ttl_flag(ttl_s), timeout=timeout)
    member = ""
    deadline = time.monotonic() + 10.0
    while not member and time.monotonic() < deadline:  # it joins just after it starts
        cluster = (await get_json(session, f"{url}/healthz"))["cluster"]
        member = str(cluster.get("member") or "") if cluster.get("checking") else ""
        if not member:
            await asyncio.sleep(0.05)
    if not member:
        raise RuntimeError(f"{name} did not join the cluster within 10 s: {proc.tail()}")
    return Master(proc, url, member)


async def wait_members(
    session: aiohttp.ClientSession, masters: list[Master], timeout: float = 30.0
) -> float:
    """Until every master counts them all as members; how long that took."""
    started = time.monotonic()
    while True:
        counts = [(await get_json(session, f"{m.url}/healthz"))["cluster"] for m in masters]
        if all(c.get("members") == len(masters) and c.get("checking") for c in counts):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"masters did not agree on {len(masters)} members: {counts}")
        await asyncio.sleep(0.1)


async def start_swarm(
    procs: Procs, logs: Path, ports: int, interval: float
) -> tuple[Proc, str, list[int]]:
    ports_file = logs / f"swarm-ports-{time.monotonic_ns()}.json"
    swarm, control = await procs.helper(
        "swarm", str(ports), str(ports_file), f"{interval:g}", name="swarm"
    )
    found: list[int] = json.loads(ports_file.read_text())
    ports_file.unlink()
    return swarm, f"http://127.0.0.1:{control}", found


async def fill(url: str, n: int, ports: list[int], interval: str, timeout: str) -> dict[str, Any]:
    """Register svc-0 .. svc-(n-1) through one master, each checked at the swarm."""
    result = await loadgen(
        {
            "base": url,
            "concurrency": CONCURRENCY,
            "max_seconds": 600,
            "requests": {
                "kind": "register",
                "n": n,
                "interval": interval,
                "timeout": timeout,
                "swarm_ports": ports,
                "faulty": False,
                "closed_ports": [],
            },
        },
        timeout=660.0,
    )
    if result["ok"] != n:
        raise RuntimeError(f"registered {result['ok']} of {n}: {str(result)[:500]}")
    return result


async def scrape(session: aiohttp.ClientSession, master: Master) -> list[Sample]:
    return parse_prometheus(await get_text(session, f"{master.url}/metrics", timeout=60.0))


def statuses(samples: list[Sample]) -> dict[str, int]:
    return {
        labels["status"]: int(value)
        for name, labels, value in samples
        if name == "picoapi_services" and "status" in labels
    }


async def wait_passing(
    session: aiohttp.ClientSession, master: Master, n: int, timeout: float
) -> tuple[float, dict[str, int]]:
    """Until `master` (which holds the whole registry) sees all `n` passing, bounded; the
    time it took (NaN if it did not happen) and the statuses last seen."""
    started = time.monotonic()
    while True:
        seen = statuses(await scrape(session, master))
        if seen.get("passing", 0) >= n:
            return time.monotonic() - started, seen
        if time.monotonic() - started > timeout:
            return math.nan, seen
        await asyncio.sleep(0.25)


def checks_total(samples: list[Sample]) -> float:
    return metric_sum(samples, CHECKS)


def lag_buckets(samples: list[Sample]) -> list[tuple[float, float]]:
    return histogram_buckets(samples, LAG)


def merge(histograms: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Cumulative bucket counts summed by bound: one histogram of every master's checks."""
    total: dict[float, float] = {}
    for buckets in histograms:
        for bound, count in buckets:
            total[bound] = total.get(bound, 0.0) + count
    return sorted(total.items())


def machine_busy_seconds() -> float:
    """CPU time every core of the machine spent busy so far (not idle, not waiting on I/O)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def own_cpu_seconds() -> float:
    """This orchestrator's own CPU time (it scrapes and waits during a window)."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


BUSY_ELSEWHERE = 0.5  # cores used by the rest of the machine past which a window is suspect


def elsewhere_problem(cores: float) -> list[str]:
    """A window during which other work on this shared machine took a share of the cores."""
    if cores <= BUSY_ELSEWHERE:
        return []
    return [
        f"other processes on this shared machine used {cores:.1f} of its "
        f"{psutil.cpu_count()} cores during the window: the figures show that contention"
    ]


def event_times(proc: Proc, name: str) -> list[tuple[float, dict[str, Any]]]:
    """(wall-clock time, event) of every `name` line in a master's JSON log."""
    found = []
    for event in proc.events():
        if event.get("event") != name or "timestamp" not in event:
            continue
        try:
            stamp = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
        except ValueError:
            continue
        found.append((stamp.timestamp(), event))
    return found
