"""9. Health-check capacity with one, two and three masters sharing one registry on etcd.

For each N (full: 10,000 and 30,000; quick: 5,000) a fresh one-member etcd on loopback
(bench/etcd_server.py), the swarm (bench/swarm.py, SWARM_PORTS loopback ports answering
200) and one master on `etcd://` with `--member-ttl`; the N services are registered
through it, each checked every 10 s at the swarm, and the case waits (bounded) until all
are passing. Then for each number of masters in turn (1, then 2, then 3; quick: 1 and 3)
the masters missing are started on the same prefix (each service is then checked by one
of them: rendezvous hashing), all must count each other as members, `settle` seconds
pass, and for `window` seconds:

- check lag p50/p99: every master's `picoapi_check_lag_seconds` histogram, differenced
  between two scrapes and summed bucket by bucket (one histogram of all the checks), the
  quantile interpolated within its bucket as Prometheus' histogram_quantile does;
- checks/s: the sum of every master's `picoapi_checks_total` over the window, against the
  N / 10 expected; the swarm's own hit count as a cross-check;
- master CPU: utime + stime of each master's pid over the window (% of one core), their
  sum, and the sum over the checks run (us of master CPU per check);
- etcd's and the swarm's CPU, and etcd's revision before and after (its writes during the
  window: none is expected once every service is passing).

On this 2-core machine the masters, etcd and the swarm share two cores: more masters
spread the checks over more processes, not over more cores than the machine has.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.cases import Case, Result, Row, dec, info, num
from bench.common import (
    Procs,
    bucket_bound,
    bucket_delta,
    get_json,
    histogram_quantile,
    log,
    mib,
)
from bench.etcd_masters import (
    BUSY_ELSEWHERE,
    Master,
    checks_total,
    elsewhere_problem,
    fill,
    lag_buckets,
    machine_busy_seconds,
    merge,
    own_cpu_seconds,
    scrape,
    start_master,
    start_swarm,
    statuses,
    wait_members,
    wait_passing,
)
from bench.etcd_server import Etcd, running
from bench.modes import Mode

INTERVAL = 10.0
TIMEOUT = "2s"
MEMBER_TTL = 10.0
SWARM_PORTS = 1000
PREFIX = "/capacity/"
START_S = 120.0  # a master joining loads every service from etcd first
KEEPS_UP = 0.98  # achieved / expected at or above this keeps up
LAG_OK_S = 1.0  # and a lag p99 under this


async def run(mode: Mode, logs: Path) -> Result:
    runs: list[dict[str, Any]] = []
    fills: list[dict[str, Any]] = []
    for n, configs in mode.etcd_capacity:
        found, filled = await one_size(mode, logs, n, configs)
        runs += found
        fills.append(filled)
    return {
        "interval_s": INTERVAL,
        "timeout": TIMEOUT,
        "member_ttl_s": MEMBER_TTL,
        "swarm_ports": SWARM_PORTS,
        "settle_s": mode.etcd_capacity_settle_s,
        "window_s": mode.etcd_capacity_window_s,
        "fills": fills,
        "runs": runs,
    }


async def one_size(
    mode: Mode, logs: Path, n: int, configs: tuple[int, ...]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    runs = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with running(logs) as etcd, aiohttp.ClientSession(timeout=timeout) as session:
        with Procs(logs) as procs:
            swarm, control, ports = await start_swarm(procs, logs, SWARM_PORTS, INTERVAL)

            async def another(k: int) -> Master:
                name = f"capacity-{n}-{k}"
                return await start_master(
                    procs, session, etcd, PREFIX, MEMBER_TTL, name, timeout=START_S
                )

            masters = [await another(1)]
            started = time.monotonic()
            await fill(masters[0].url, n, ports, f"{INTERVAL:g}s", TIMEOUT)
            registered_s = time.monotonic() - started
            passing_s, seen = await wait_passing(session, masters[0], n, 60.0 + n / 200)
            filled = {
                "services": n,
                "registered_in_s": registered_s,
                "passing_in_s": passing_s,
                "statuses": seen,
                "revision": await etcd.revision(session),
            }
            log(
                f"etcd health N={n:,}: registered in {registered_s:.1f} s, all passing "
                f"{dec(passing_s, 1)} s later ({seen})"
            )
            for count in sorted(configs):
                while len(masters) < count:
                    masters.append(await another(len(masters) + 1))
                await wait_members(session, masters, timeout=60.0)
                await asyncio.sleep(mode.etcd_capacity_settle_s)
                result = await window(session, mode, etcd, swarm, control, masters, n)
                runs.append(result)
                log(
                    f"etcd health N={n:,} masters={count}: lag p50 "
                    f"{result['lag_p50_ms']:.1f} ms p99 {result['lag_p99_ms']:.1f} ms, "
                    f"{result['checks_per_s']:,.0f} checks/s (expected "
                    f"{result['expected_per_s']:,.0f}), master CPU {result['cpu_pct']:.0f} % "
                    f"({', '.join(f'{c:.0f}' for c in result['cpu_pct_each'])}), etcd "
                    f"{result['etcd_cpu_pct']:.0f} %, {result['etcd_writes']} etcd writes"
                )
    return runs, filled


async def window(
    session: aiohttp.ClientSession,
    mode: Mode,
    etcd: Etcd,
    swarm: Any,
    control: str,
    masters: list[Master],
    n: int,
) -> dict[str, Any]:
    before = [await scrape(session, m) for m in masters]
    revision0 = await etcd.revision(session)
    await session.post(f"{control}/_control/reset")
    cpu0 = [m.proc.cpu_seconds() for m in masters]
    etcd0, swarm0, t0 = etcd.cpu_seconds(), swarm.cpu_seconds(), time.perf_counter()
    busy0, mine0 = machine_busy_seconds(), own_cpu_seconds()
    await asyncio.sleep(mode.etcd_capacity_window_s)
    busy1, mine1 = machine_busy_seconds(), own_cpu_seconds()
    cpu1 = [m.proc.cpu_seconds() for m in masters]
    etcd1, swarm1, t1 = etcd.cpu_seconds(), swarm.cpu_seconds(), time.perf_counter()
    at_swarm = await get_json(session, f"{control}/_control/report")
    after = [await scrape(session, m) for m in masters]
    revision1 = await etcd.revision(session)
    span = t1 - t0
    own = [bucket_delta(lag_buckets(b), lag_buckets(a)) for b, a in zip(before, after, strict=True)]
    lags = merge(own)
    each = [(checks_total(a) - checks_total(b)) / span for b, a in zip(before, after, strict=True)]
    cpu_each = [100 * (c1 - c0) / span for c0, c1 in zip(cpu0, cpu1, strict=True)]
    checks = sum(each) * span
    ours = sum(c1 - c0 for c0, c1 in zip(cpu0, cpu1, strict=True))
    ours += (etcd1 - etcd0) + (swarm1 - swarm0) + (mine1 - mine0)
    elsewhere = max(0.0, (busy1 - busy0) - ours) / span
    return {
        "services": n,
        "masters": len(masters),
        "expected_per_s": n / INTERVAL,
        "checks_per_s": sum(each),
        "checks_per_s_each": each,
        "swarm_hits_per_s": at_swarm["hits_per_s"],
        "late_at_swarm_p99_ms": at_swarm["late_p99_s"] * 1000,
        "lag_p50_ms": histogram_quantile(lags, 0.50) * 1000,
        "lag_p99_ms": histogram_quantile(lags, 0.99) * 1000,
        "lag_p99_bound_ms": bucket_bound(lags, 0.99) * 1000,
        "lag_p99_ms_each": [histogram_quantile(b, 0.99) * 1000 for b in own],
        "cpu_pct": sum(cpu_each),
        "cpu_pct_each": cpu_each,
        "cpu_us_per_check": 1e6
        * sum(c1 - c0 for c0, c1 in zip(cpu0, cpu1, strict=True))
        / max(checks, 1),
        "rss_mib_each": [mib(m.proc.rss()) for m in masters],
        "etcd_cpu_pct": 100 * (etcd1 - etcd0) / span,
        "swarm_cpu_pct": 100 * (swarm1 - swarm0) / span,
        "etcd_writes": revision1 - revision0,
        "statuses": statuses(after[0]),
        "window_s": span,
        "elsewhere_cores": elsewhere,
        "problems": elsewhere_problem(elsewhere),
    }


# --- the report ------------------------------------------------------------------------


def _keeps_up(r: dict[str, Any]) -> bool:
    achieved = r["checks_per_s"] / r["expected_per_s"] if r["expected_per_s"] else 0.0
    lag = r["lag_p99_ms"]
    return achieved >= KEEPS_UP and not math.isnan(lag) and lag < LAG_OK_S * 1000


def _masters(counts: list[int]) -> str:
    text = " and ".join(str(c) for c in counts)
    return f"{text} master{'s' if counts != [1] else ''}"


def verdict(result: Result) -> list[str]:
    """Per N, in plain words: does adding masters add capacity here?"""
    lines = []
    sizes = sorted({r["services"] for r in result.get("runs") or []})
    for n in sizes:
        group = sorted(
            (r for r in result["runs"] if r["services"] == n), key=lambda r: r["masters"]
        )
        kept = [r["masters"] for r in group if _keeps_up(r)]
        parts = "; ".join(
            f"{r['masters']} master{'s' if r['masters'] > 1 else ''}: "
            f"{r['checks_per_s'] / r['expected_per_s']:.0%} of the checks due, lag p99 "
            f"{dec(r['lag_p99_ms'], 0)} ms, {r['cpu_pct']:.0f} % CPU in all "
            f"({r['cpu_us_per_check']:.0f} us a check)"
            for r in group
        )
        first, last = group[0], group[-1]
        busy = [r for r in group if r.get("problems")]
        if busy:
            what = (
                "not judged: other work on the machine took "
                + ", ".join(f"{r['elsewhere_cores']:.1f}" for r in busy)
                + f" cores during the window(s) with {_masters([r['masters'] for r in busy])}"
            )
        elif len(kept) == len(group):
            what = (
                "every configuration keeps up: this N shows no capacity limit, and more "
                f"masters only split the work (busiest master {max(first['cpu_pct_each']):.0f} % "
                f"of a core alone, {max(last['cpu_pct_each']):.0f} % with {last['masters']})"
            )
        elif not kept:
            gain = last["checks_per_s"] / first["checks_per_s"] if first["checks_per_s"] else 0
            what = (
                f"no configuration keeps up; {last['masters']} masters run {gain:.2f}x the "
                f"checks of {first['masters']}: "
                + (
                    "capacity grows with masters, up to what the machine's cores allow"
                    if gain > 1.05
                    else "capacity does not grow with masters on this machine"
                )
            )
        else:
            missed = [r["masters"] for r in group if r["masters"] not in kept]
            if min(kept) > max(missed):
                trend = "capacity grows with masters"
            elif max(kept) < min(missed):
                trend = "more masters did worse here, not better"
            else:
                trend = "no steady trend with the number of masters"
            what = (
                f"{_masters(kept)} kept up, {_masters(missed)} did not (lag p99 "
                + ", ".join(dec(r["lag_p99_ms"], 0) for r in group if r["masters"] in missed)
                + f" ms): {trend}"
            )
        lines.append(f"- **{n:,} services**: {parts}. So: {what}.")
    return lines


def goals(result: Result) -> list[Row]:
    rows = []
    for r in result.get("runs") or []:
        rows.append(
            info(
                f"Health checks on etcd, {r['services']:,} services at 10 s, "
                f"{r['masters']} master{'s' if r['masters'] > 1 else ''}: checks/s vs expected",
                f"{num(r['checks_per_s'])}/s vs {num(r['expected_per_s'])}/s; lag p99 "
                f"{dec(r['lag_p99_ms'], 1)} ms; master CPU {r['cpu_pct']:.0f} %",
                r["checks_per_s"],
                r["expected_per_s"],
                r.get("problems") or [],
            )
        )
    if not rows:
        rows.append(info("Health checks on etcd, 1 to 3 masters", "-", None, None))
    return rows


def headline(result: Result) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for r in result.get("runs") or []:
        key = f"etcd_{r['services']}_{r['masters']}m"
        flat[f"{key}_checks_per_s"] = r["checks_per_s"]
        flat[f"{key}_lag_p99_ms"] = r["lag_p99_ms"]
        flat[f"{key}_cpu_pct"] = r["cpu_pct"]
    return flat


def section(result: Result) -> list[str]:
    lines = [
        "",
        f"## 9. Health-check capacity on etcd, 1-3 masters (interval {result['interval_s']:g} s,"
        f" timeout {result['timeout']}, `--member-ttl {result['member_ttl_s']:g}s`, swarm on "
        f"{result['swarm_ports']:,} ports, settle {result['settle_s']:g} s, window "
        f"{result['window_s']:g} s)",
        "",
    ]
    for f in result.get("fills") or []:
        lines.append(
            f"{f['services']:,} services registered through one master in "
            f"{f['registered_in_s']:.1f} s, all passing {dec(f['passing_in_s'], 1)} s later "
            f"(etcd revision {f['revision']:,})."
        )
    lines += [
        "",
        "| N | masters | checks/s (expected) | at swarm/s | lag p50 ms | lag p99 ms |"
        " per master | late at swarm p99 ms | master CPU, sum | per master | us CPU a check |"
        " etcd CPU | swarm CPU | etcd writes in window | RSS per master MiB |"
        " cores used elsewhere |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in result.get("runs") or []:
        lines.append(
            f"| {r['services']:,} | {r['masters']} | {num(r['checks_per_s'])} "
            f"({num(r['expected_per_s'])}) | {num(r['swarm_hits_per_s'])} | "
            f"{dec(r['lag_p50_ms'], 1)} | {dec(r['lag_p99_ms'], 1)} | "
            f"{', '.join(dec(x, 1) for x in r.get('lag_p99_ms_each') or [])} | "
            f"{dec(r['late_at_swarm_p99_ms'], 1)} | {r['cpu_pct']:.0f} % | "
            f"{', '.join(f'{c:.0f} %' for c in r['cpu_pct_each'])} | "
            f"{r['cpu_us_per_check']:.0f} | {r['etcd_cpu_pct']:.0f} % | "
            f"{r['swarm_cpu_pct']:.0f} % | {r['etcd_writes']:,} | "
            f"{', '.join(f'{m:.0f}' for m in r['rss_mib_each'])} | "
            f"{dec(r.get('elsewhere_cores'), 2)} |"
        )
    lines += [
        "",
        "Does capacity grow with masters?",
        "",
        *verdict(result),
        *(
            [
                "",
                "**The shared machine was busy** during some windows (`cores used elsewhere`: "
                "all cores' busy time from /proc/stat minus the masters', etcd's, the swarm's "
                f"and this orchestrator's, over the window; more than {BUSY_ELSEWHERE:g} "
                "marks the row an error): those rows measure that contention, not the "
                "masters; rerun when the machine is quiet.",
            ]
            if any(r.get("problems") for r in result.get("runs") or [])
            else []
        ),
        "",
        "Lag and checks/s from every master's /metrics, summed (the lag histograms bucket by "
        "bucket; buckets end at 1, 5, 10, 50, 100, 250, 500 ms, 1, 2, 5, 10 s, quantiles "
        "interpolated within one); `at swarm/s` the swarm's own count of checks it answered; "
        "`late at swarm` how much later than one interval a service's next check came there. "
        "CPU by pid (/proc/PID/stat) over the window, % of one core. A configuration keeps up "
        f"when it runs at least {KEEPS_UP:.0%} of the checks due with a lag p99 under "
        f"{LAG_OK_S:g} s. The masters, etcd and the swarm share this machine's 2 cores. "
        "Masters are listed in the order they started. A master that comes by its share "
        "through a rebalance (a member joined or left after its scheduler started) checks all "
        "of it within about a second and keeps that phase, interval after interval: its "
        "checks come in one burst per interval, and its lag p99 (per master) shows it.",
    ]
    return lines


CASE = Case(
    name="etcd_health",
    order=90,
    run=run,
    goals=goals,
    section=section,
    headline=headline,
)
