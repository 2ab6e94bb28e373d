"""10. Steady-state writes to etcd: three masters, every service passing, nothing changing.

A one-member etcd on loopback (bench/etcd_server.py), three masters on it, the failover
case's N services and interval (quick: 300 at 1 s; full: 3,000 at 10 s) checked at the
swarm (bench/swarm.py, every one answering 200). Once all are passing (and two seconds
more), etcd's revision is read (POST /v3/kv/range with key "AA==", b"\\0": the header's
revision grows by one with every write: put, delete, a transaction that wrote), then again
after `window` seconds; writes per second = the difference over the window. A status change
is the only write a check makes, and lease keep-alives are not writes, so a steady registry
should write nothing: the goal is about 0 (at most 0.1/s). The masters' checks over the
window (`picoapi_checks_total`) show the checks did run; any key written in the window is
listed. How many writes it took to get there (a PUT each, a first status each) is reported
too. A window in which checks failed or a master rejoined (each a write: a status change, a
member key) was not a steady state, most likely a stalled machine: the row is then an error
that says so, not a miss.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.case_failover import check_timeout
from bench.cases import Case, Result, Row, dec, goal, num
from bench.common import Procs, Sample, get_json, log
from bench.etcd_masters import (
    CHECKS,
    checks_total,
    event_times,
    fill,
    scrape,
    start_master,
    start_swarm,
    statuses,
    wait_members,
    wait_passing,
)
from bench.etcd_server import running
from bench.modes import Mode

PREFIX = "/steady/"
SWARM_PORTS = 100
SETTLE_S = 2.0
GOAL_PER_S = 0.1


async def run(mode: Mode, logs: Path) -> Result:
    n, interval, ttl = mode.failover_services, mode.failover_interval_s, mode.failover_member_ttl_s
    window_s = mode.steady_window_s
    async with running(logs) as etcd, aiohttp.ClientSession() as session:
        with Procs(logs) as procs:
            _swarm, _control, ports = await start_swarm(procs, logs, SWARM_PORTS, interval)
            masters = [
                await start_master(procs, session, etcd, PREFIX, ttl, f"steady-{k}")
                for k in range(3)
            ]
            await wait_members(session, masters)
            revision_empty = await etcd.revision(session)
            await fill(masters[0].url, n, ports, f"{interval:g}s", check_timeout(interval))
            passing_s, seen = await wait_passing(session, masters[0], n, 30.0 + n / 100)
            if math.isnan(passing_s):
                raise RuntimeError(f"not all {n} services passing: {seen}")
            await asyncio.sleep(SETTLE_S)
            before = [await scrape(session, m) for m in masters]
            revision0 = await etcd.revision(session)
            etcd_cpu0, t0, wall0 = etcd.cpu_seconds(), time.perf_counter(), time.time()
            await asyncio.sleep(window_s)
            revision1 = await etcd.revision(session)
            etcd_cpu1, t1 = etcd.cpu_seconds(), time.perf_counter()
            after = [await scrape(session, m) for m in masters]
            members = [await get_json(session, f"{m.url}/healthz") for m in masters]
            changed = await etcd.changed_keys(session, revision0) if revision1 > revision0 else []
            rejoined = sum(
                1 for m in masters for t, _ in event_times(m.proc, "member_joined") if t >= wall0
            )
    span = t1 - t0
    writes = revision1 - revision0
    checks = [checks_total(a) - checks_total(b) for b, a in zip(before, after, strict=True)]
    failed = sum(failed_checks(a) - failed_checks(b) for b, a in zip(before, after, strict=True))
    result = {
        "services": n,
        "interval_s": interval,
        "member_ttl_s": ttl,
        "masters": len(masters),
        "window_s": span,
        "revision_before": revision0,
        "revision_after": revision1,
        "writes": writes,
        "writes_per_s": writes / span,
        "changed_keys": changed,
        "checks": sum(checks),
        "checks_each": checks,
        "expected_checks": n * span / interval,
        "failed_checks": failed,
        "rejoined": rejoined,
        "members_after": [m["cluster"].get("members") for m in members],
        "loadavg": os.getloadavg()[0],
        "statuses_after": statuses(after[0]),
        "etcd_cpu_pct": 100 * (etcd_cpu1 - etcd_cpu0) / span,
        "writes_to_fill": revision0 - revision_empty,
        "etcd": {"version": etcd.version, "disk": etcd.disk()},
    }
    log(
        f"steady: {writes} etcd writes in {span:.1f} s ({result['writes_per_s']:.3f}/s) while "
        f"{sum(checks):,.0f} checks ran; {result['writes_to_fill']:,} writes to fill {n:,}"
    )
    return result


# --- the report ------------------------------------------------------------------------


def failed_checks(samples: list[Sample]) -> float:
    """Checks whose result was not passing (each one a status change here)."""
    return sum(
        value
        for name, labels, value in samples
        if name == CHECKS and labels.get("status") != "passing"
    )


def _problems(result: Result) -> list[str]:
    if not result:
        return []
    found = []
    passing = (result.get("statuses_after") or {}).get("passing", 0)
    if passing != result["services"]:
        found.append(f"{passing} of {result['services']} passing at the end")
    if result.get("failed_checks") or result.get("rejoined"):
        found.append(
            f"not a steady state: {result['failed_checks']:,.0f} checks failed and "
            f"{result['rejoined']} master(s) rejoined in the window, each a status change or a "
            f"member key (a write); the machine stalled (load average {result['loadavg']:.1f})"
        )
    if result["checks"] < 0.9 * result["expected_checks"]:
        found.append(
            f"only {result['checks']:,.0f} checks ran ({result['expected_checks']:,.0f} due)"
        )
    return found


def goals(result: Result) -> list[Row]:
    rate = result.get("writes_per_s")
    return [
        goal(
            f"Steady-state writes to etcd per second: 3 masters, "
            f"{result.get('services', 0):,} services all passing, checked every "
            f"{result.get('interval_s', math.nan):g} s, over {result.get('window_s', 0):.0f} s",
            f"{dec(rate, 3)}/s ({result.get('writes', '-')} writes while "
            f"{num(result.get('checks'))} checks ran)",
            rate,
            GOAL_PER_S,
            baseline="-",
            need=1,
            at_least=False,
            need_text=f"~0 (<= {GOAL_PER_S:g}/s)",
            problems=_problems(result),
        )
    ]


def headline(result: Result) -> dict[str, Any]:
    return {"steady_etcd_writes_per_s": result.get("writes_per_s")}


def section(result: Result) -> list[str]:
    changed = result.get("changed_keys") or []
    lines = [
        "",
        f"## 10. Steady-state writes to etcd (3 masters, {result['services']:,} services "
        f"checked every {result['interval_s']:g} s, all passing, window "
        f"{result['window_s']:.0f} s)",
        "",
        "| etcd revision before | after | writes | writes/s | checks run (due) | per master |"
        " failed checks | masters rejoined | etcd CPU | writes to register and first-check"
        " them all |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
        f"| {result['revision_before']:,} | {result['revision_after']:,} | {result['writes']:,} |"
        f" {result['writes_per_s']:.3f} | {num(result['checks'])} "
        f"({num(result['expected_checks'])}) | "
        f"{', '.join(num(c) for c in result['checks_each'])} | "
        f"{num(result.get('failed_checks'))} | {result.get('rejoined', '-')} | "
        f"{result['etcd_cpu_pct']:.1f} % | {result['writes_to_fill']:,} "
        f"({result['writes_to_fill'] / max(result['services'], 1):.2f} a service) |",
        "",
        "The revision from POST /v3/kv/range with key `AA==` (its header), before and after "
        "the window; lease keep-alives (each master renews its member key's lease every "
        "third of a TTL) are not writes. "
        + (
            f"Keys written in the window: {', '.join(f'`{k}`' for k in changed)}."
            if changed
            else "No key was written in the window."
        ),
    ]
    return lines


CASE = Case(
    name="etcd_steady",
    order=100,
    run=run,
    goals=goals,
    section=section,
    headline=headline,
)
